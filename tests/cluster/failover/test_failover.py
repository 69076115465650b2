"""Failover against the real local cluster: each detection path with an injected fault of
its kind, the rules, both restart strategies, node exclusion, and the no-free-node case."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubernetes import client

from chaos import fail_pod, node_not_ready, node_ready, set_node_hpus
from cluster.gtj import create_job, events_for, get_job, job_body, worker_pods
from conftest import wait_for

pytestmark = pytest.mark.cluster

GEN = "gaudi.scalestarter.dev/generation"


@pytest.fixture(scope="module")
def failover_operator(operator: Any, cluster: Any) -> Iterator[Any]:
    """The operator with Prometheus (HPU health, stall clock) and a 1 s stall poll."""
    os.environ["GAUDI3_STALL_POLL_SECONDS"] = "1"
    operator.restart("--prometheus-url", cluster.prometheus_url)
    yield operator
    os.environ.pop("GAUDI3_STALL_POLL_SECONDS", None)


def status(custom: Any, ns: str, name: str) -> dict[str, Any]:
    return get_job(custom, ns, name).get("status") or {}


def running(core: Any, ns: str, job: str, n: int, gen: int | None = None) -> list[Any] | None:
    pods = [p for p in worker_pods(core, ns, job) if not p.metadata.deletion_timestamp]
    ok = [
        p
        for p in pods
        if p.status.phase == "Running" and (gen is None or p.metadata.labels[GEN] == str(gen))
    ]
    return ok if len(pods) == n and len(ok) == n else None


def start(
    custom: Any, core: Any, ns: str, name: str, replicas: int, hpus: int = 1, **policy: Any
) -> list[Any]:
    spec = {
        "hpusPerWorker": hpus,
        "workers": {"replicas": replicas},
        "failurePolicy": {"backoffSeconds": 0, **policy},
    }
    create_job(custom, ns, job_body(name, **spec))
    return wait_for(
        lambda: running(core, ns, name, replicas),
        timeout=90,
        what=f"{replicas} running workers of {name}",
    )  # type: ignore[return-value]


def condition(st: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in st.get("conditions") or [] if c["type"] == type_), {})


@contextlib.contextmanager
def node_down(core: Any, node: str) -> Iterator[None]:
    node_not_ready(core, node)
    try:
        yield
    finally:
        node_ready(core, node)


# --- pod failures and rules ---------------------------------------------------------------


def test_exit_code_rule_fails_the_job_at_once(
    failover_operator: Any, core: Any, custom: Any, namespace: str, hpus_free: Any
) -> None:
    hpus_free()
    rules = [{"exitCodes": [2], "action": "Fail"}]
    pods = start(custom, core, namespace, "perm", 2, rules=rules, backoffSeconds=30)
    fail_pod(core, namespace, pods[1].metadata.name, exit_code=2)
    st = wait_for(
        lambda: (s := status(custom, namespace, "perm")).get("phase") == "Failed" and s,
        timeout=30,
        what="Failed",
    )
    assert st["restarts"] == 0  # at once: no restart, no backoff wait
    assert st["lastFailure"]["exitCode"] == 2 and st["lastFailure"]["reason"] == "Error"
    assert condition(st, "Failed")["reason"] == "FailurePolicyRule"


def test_recreate_all_replaces_every_worker_with_one_new_generation(
    failover_operator: Any, core: Any, custom: Any, namespace: str, hpus_free: Any
) -> None:
    hpus_free()
    before = start(custom, core, namespace, "world", 3)
    old_uids = {p.metadata.uid for p in before}
    fail_pod(core, namespace, "world-worker-1", exit_code=1)
    after = wait_for(
        lambda: running(core, namespace, "world", 3, gen=1), timeout=60, what="generation 1 running"
    )
    assert not old_uids & {p.metadata.uid for p in after}  # every worker is new
    st = wait_for(
        lambda: (s := status(custom, namespace, "world")).get("phase") == "Running" and s,
        timeout=30,
        what="Running again",
    )
    assert st["restarts"] == 1 and st["restartGeneration"] == 1
    assert st["lastFailure"]["pod"] == "world-worker-1" and st["lastFailure"]["exitCode"] == 1
    assert condition(st, "Restarting")["reason"] == "Recovered"
    reasons = {e.reason for e in events_for(core, namespace, "world")}
    assert {"WorkerFailed", "RestartingWorkers"} <= reasons
    text = wait_for(
        lambda: (
            'failover_latency_seconds_count{stage="running"}' in (t := failover_operator.metrics())
            and t
        ),
        timeout=10,
        what="failover metrics",
    )
    assert 'gaudi_operator_worker_failures_total{reason="Error"}' in text
    assert 'gaudi_operator_restarts_total{counted="true",strategy="RecreateAll"}' in text
    assert 'gaudi_operator_failover_latency_seconds_count{stage="created"}' in text


def test_recreate_failed_replaces_only_the_failed_worker(
    failover_operator: Any, core: Any, custom: Any, namespace: str, hpus_free: Any
) -> None:
    hpus_free()
    before = {
        p.metadata.name: p.metadata.uid
        for p in start(custom, core, namespace, "elastic", 3, restartStrategy="RecreateFailed")
    }
    fail_pod(core, namespace, "elastic-worker-1", exit_code=1)

    def replaced() -> dict[str, str] | None:
        pods = running(core, namespace, "elastic", 3, gen=0)
        uids = {p.metadata.name: p.metadata.uid for p in pods or []}
        return uids if uids and uids["elastic-worker-1"] != before["elastic-worker-1"] else None

    after = wait_for(replaced, timeout=60, what="worker 1 replaced")
    assert after["elastic-worker-0"] == before["elastic-worker-0"]  # peers untouched
    assert after["elastic-worker-2"] == before["elastic-worker-2"]
    assert status(custom, namespace, "elastic")["restarts"] == 1


def test_spent_restart_limit_fails_the_job_with_the_last_reason(
    failover_operator: Any, core: Any, custom: Any, namespace: str, hpus_free: Any
) -> None:
    hpus_free()
    start(custom, core, namespace, "flaky", 2, maxRestarts=1)
    fail_pod(core, namespace, "flaky-worker-0", exit_code=3)
    wait_for(lambda: running(core, namespace, "flaky", 2, gen=1), timeout=60, what="restart 1")
    fail_pod(core, namespace, "flaky-worker-1", exit_code=4)
    st = wait_for(
        lambda: (s := status(custom, namespace, "flaky")).get("phase") == "Failed" and s,
        timeout=30,
        what="Failed",
    )
    assert st["restarts"] == 1 and st["lastFailure"]["exitCode"] == 4
    assert condition(st, "Failed")["reason"] == "RestartLimitExceeded"


def test_eviction_is_classified_and_restart_ignore_limit_is_not_counted(
    failover_operator: Any, core: Any, custom: Any, namespace: str, hpus_free: Any
) -> None:
    hpus_free()
    rules = [{"reasons": ["Evicted"], "action": "RestartIgnoreLimit"}]
    start(custom, core, namespace, "evict", 2, maxRestarts=0, rules=rules)
    core.create_namespaced_pod_eviction(
        "evict-worker-0",
        namespace,
        client.V1Eviction(metadata=client.V1ObjectMeta(name="evict-worker-0", namespace=namespace)),
    )
    wait_for(lambda: running(core, namespace, "evict", 2, gen=1), timeout=60, what="restarted")
    st = status(custom, namespace, "evict")
    assert st["lastFailure"]["reason"] == "Evicted" and st["lastFailure"]["pod"] == "evict-worker-0"
    assert "EvictionByEvictionAPI" in st["lastFailure"]["message"]  # the DisruptionTarget
    assert st["restarts"] == 0  # maxRestarts 0, yet it restarted: not counted
    assert st["phase"] != "Failed"


# --- node failures ------------------------------------------------------------------------


def test_node_notready_moves_workers_after_grace(
    failover_operator: Any, core: Any, custom: Any, namespace: str, hpus_free: Any
) -> None:
    hpus_free()
    grace = 5
    pods = start(custom, core, namespace, "nodefail", 2, hpus=8, nodeFailureGraceSeconds=grace)
    bad = pods[1].spec.node_name
    with node_down(core, bad):
        t0 = time.monotonic()

        def moved() -> list[Any] | None:
            ok = running(core, namespace, "nodefail", 2, gen=1)
            return ok if ok and all(p.spec.node_name != bad for p in ok) else None

        after = wait_for(moved, timeout=90, interval=0.2, what="workers moved off the node")
        elapsed = time.monotonic() - t0
        st = status(custom, namespace, "nodefail")
    assert elapsed < grace + 15, f"took {elapsed:.1f}s (grace {grace}s), not the 300 s default"
    assert st["lastFailure"]["reason"] == "NodeLost" and st["lastFailure"]["node"] == bad
    assert st["excludedNodes"] == [bad]
    for p in after:
        terms = p.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution
        exprs = [e for t in terms.node_selector_terms for e in t.match_expressions or []]
        assert any(e.operator == "NotIn" and bad in e.values for e in exprs)


def test_hpu_allocatable_drop_is_hpu_unhealthy_and_excludes_the_node(
    failover_operator: Any, core: Any, custom: Any, namespace: str, hpus_free: Any
) -> None:
    hpus_free()
    pods = start(custom, core, namespace, "hpudrop", 2, hpus=4)
    bad = pods[0].spec.node_name
    set_node_hpus(core, bad, 6)
    try:
        wait_for(
            lambda: (
                (status(custom, namespace, "hpudrop").get("lastFailure") or {}).get("reason")
                == "HPUUnhealthy"
            ),
            timeout=30,
            what="HPUUnhealthy",
        )
        after = wait_for(
            lambda: running(core, namespace, "hpudrop", 2, gen=1), timeout=60, what="restarted"
        )
    finally:
        set_node_hpus(core, bad, 8)
    st = status(custom, namespace, "hpudrop")
    assert st["excludedNodes"] == [bad] and st["lastFailure"]["node"] == bad
    assert all(p.spec.node_name != bad for p in after)


def test_no_free_node_says_so_in_a_condition(
    failover_operator: Any, core: Any, custom: Any, namespace: str, hpus_free: Any
) -> None:
    hpus_free()
    # Four 8-HPU workers fill the four nodes: once one node is excluded, a worker has
    # nowhere to go.
    pods = start(custom, core, namespace, "full", 4, hpus=8, nodeFailureGraceSeconds=2)
    bad = pods[2].spec.node_name
    with node_down(core, bad):
        st = wait_for(
            lambda: (
                condition(s := status(custom, namespace, "full"), "Restarting").get("reason")
                == "NoFeasibleNode"
                and s
            ),
            timeout=60,
            what="NoFeasibleNode condition",
        )
    cond = condition(st, "Restarting")
    assert cond["status"] == "True" and bad in cond["message"]
    assert st["phase"] == "Restarting"
    assert any(e.reason == "NoFeasibleNode" for e in events_for(core, namespace, "full"))


# --- Prometheus: the training progress (the Gaudi exporter: test_exporter_faults.py) -------


class Exporter:
    """A Prometheus exporter on 127.0.0.1 whose text the test changes."""

    def __init__(self, cluster: Any, name: str) -> None:
        self.text = ""
        self.name = name
        self.targets = cluster.targets_dir / f"{name}.json"
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = outer.text.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        port = self.server.server_address[1]
        self.targets.write_text(
            json.dumps([{"targets": [f"127.0.0.1:{port}"], "labels": {"exporter": name}}])
        )

    def close(self) -> None:
        self.targets.unlink(missing_ok=True)
        self.server.shutdown()


@pytest.fixture
def exporter(cluster: Any, request: pytest.FixtureRequest) -> Iterator[Exporter]:
    e = Exporter(cluster, f"failover-{request.node.name[:40]}-{os.getpid()}")
    yield e
    e.close()


class Trainer:
    """A training job's step on the test exporter, advancing every half second until
    stopped, with the labels Prometheus gives a pod's series (`namespace` included)."""

    def __init__(self, exporter: Exporter, namespace: str, job: str) -> None:
        self.exporter, self.namespace, self.job = exporter, namespace, job
        self.step = 0
        self.stopped_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.step += 1
            labels = f'gtj="{self.job}",gtj_namespace="{self.namespace}",rank="0"'
            self.exporter.text = (
                f'gaudi3_train_step{{{labels},namespace="{self.namespace}"}} {self.step}\n'
            )
            time.sleep(0.5)

    def stop(self) -> None:
        """The collective hangs: the step stops moving (the series stays)."""
        self._stop.set()
        self._thread.join()
        self.stopped_at = time.monotonic()


def operator_step(operator: Any, ns: str, job: str) -> float:
    """The job's step as the operator's stall clock last read it (its metrics), or 0."""
    want = f'gaudi_operator_job_training_step{{gtj="{job}",gtj_namespace="{ns}"}}'
    for line in operator.metrics().splitlines():
        if line.startswith(want):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_stalled_training_restarts_the_world(
    failover_operator: Any,
    core: Any,
    custom: Any,
    namespace: str,
    hpus_free: Any,
    exporter: Exporter,
) -> None:
    hpus_free()
    start(custom, core, namespace, "hang", 2, stallTimeoutSeconds=6)
    trainer = Trainer(exporter, namespace, "hang")
    try:
        first = wait_for(
            lambda: (status(custom, namespace, "hang").get("progress") or {}).get("step"),
            timeout=30,
            what="the first step recorded",
        )
        time.sleep(8)  # advancing: longer than the timeout, and no stall
        assert status(custom, namespace, "hang")["restarts"] == 0
        # Progress lives in the operator's memory and metrics; status keeps the first step
        # (the next record is minutes away): no write per step.
        assert operator_step(failover_operator, namespace, "hang") > first + 10
        assert status(custom, namespace, "hang")["progress"]["step"] == first
    finally:
        trainer.stop()
    t0 = time.monotonic()
    st = wait_for(
        lambda: (s := status(custom, namespace, "hang")).get("lastFailure") and s,
        timeout=45,
        what="Stalled",
    )
    assert st["lastFailure"]["reason"] == "Stalled"
    assert time.monotonic() - t0 < 6 + 10
    wait_for(lambda: running(core, namespace, "hang", 2, gen=1), timeout=60, what="restarted")


def test_a_restarted_operator_dates_a_stall_from_the_steps_history(
    failover_operator: Any,
    cluster: Any,
    core: Any,
    custom: Any,
    namespace: str,
    hpus_free: Any,
    exporter: Exporter,
) -> None:
    """The stall began before the operator restarted: the clock rebuilt from Prometheus
    finds it one timeout after the step stopped, not one timeout after the restart."""
    timeout = 12
    hpus_free()
    start(custom, core, namespace, "rebuilt", 1, stallTimeoutSeconds=timeout)
    trainer = Trainer(exporter, namespace, "rebuilt")
    try:
        wait_for(
            lambda: operator_step(failover_operator, namespace, "rebuilt") > 4,
            timeout=30,
            what="steps read",
        )
    finally:
        trainer.stop()
    stopped = trainer.stopped_at
    assert stopped is not None
    failover_operator.kill()
    time.sleep(max(0.0, stopped + 6 - time.monotonic()))  # down over half the timeout
    failover_operator.start("--prometheus-url", cluster.prometheus_url)
    healthy = time.monotonic()
    assert "lastFailure" not in status(custom, namespace, "rebuilt")
    wait_for(
        lambda: (
            (status(custom, namespace, "rebuilt").get("lastFailure") or {}).get("reason")
            == "Stalled"
        ),
        timeout=60,
        interval=0.25,
        what="Stalled",
    )
    found = time.monotonic()
    assert found - stopped > timeout - 2, "a stall found before the timeout ran out"
    # A clock started at the first read after the restart would need the full timeout.
    assert found - healthy < timeout - 3, (found - stopped, found - healthy)
