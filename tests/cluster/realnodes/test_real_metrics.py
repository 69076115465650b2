"""The operator's autoscaler and stall detection on the launcher's own metrics: two worker
pods on the real nodes serve `gaudi3_train_*` on their pod IPs, the cluster's Prometheus
scrapes them (realnodes-sync writes the annotated pods of the real nodes into its file_sd
folder), and the operator reads them there. No test exporter.

One job for the module: the autoscaler's decision first (it does not disturb the world),
then a SIGSTOPped worker, which the stall clock must notice and the operator recover.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cluster.gtj import OperatorProcess
from cluster.realnodes.conftest import training_image_on_nodes
from conftest import wait_for
from gaudi_devtools import realtraining

pytestmark = pytest.mark.real_training

JOB = "watched"
# The stall timeout while a worker is stopped. A recreated world's start-up counts against
# the timeout (its clock restarts with the restart, and its pods are Ready before torch has
# even loaded), which takes a minute or more on this shared machine: the job runs with the
# long timeout and the test shortens it only while it waits for the stall.
STALL_SECONDS = 8
LONG_STALL_SECONDS = 600
THROUGHPUT = 'sum(gaudi3_train_samples_per_second{gtj="$job",gtj_namespace="$namespace"})'


def job(name: str, checkpoints: Path, prometheus: str) -> dict[str, Any]:
    """The real-node training job (gaudi_devtools.realtraining) with stall detection and
    the autoscaler on, both reading the cluster's Prometheus."""
    policy = {"maxRestarts": 10, "stallTimeoutSeconds": LONG_STALL_SECONDS, "backoffSeconds": 0}
    body = realtraining.job(name, checkpoints, failure_policy=policy)
    body["spec"]["autoscaling"] = {
        "enabled": True,
        "prometheusURL": prometheus,
        # Any throughput is far above 1 sample/s: the autoscaler wants more workers than
        # maxReplicas allows, and records that it holds at 2.
        "metric": {"query": THROUGHPUT, "type": "Value", "target": 1},
        "scaleUp": {"stabilizationSeconds": 0, "maxStep": 2},
    }
    body["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 5
    return body


def training_pods(real: Any) -> list[str]:
    """GaudiTrainingJob worker pods on the real nodes, in any namespace."""
    out = real.kubectl("get", "pods", "-A", "-l", f"{realtraining.GROUP}/job-name", "-o", "json")
    return [
        p["metadata"]["name"]
        for p in json.loads(out.stdout)["items"]
        if p["spec"].get("nodeName", "").startswith("gaudi3-real-")
    ]


@pytest.fixture(scope="module")
def watched(real: Any) -> Iterator[tuple[str, Path, OperatorProcess]]:
    """The job trains, watched by this tree's operator allowed to query the cluster's
    Prometheus; its namespace, checkpoint directory and the operator."""
    training_image_on_nodes(real)
    # Workers of another job bind the same ports on the same node addresses.
    wait_for(lambda: not training_pods(real), timeout=60, what="no other job's workers")
    op = OperatorProcess(real.kubeconfig, real.dir / "logs" / "operator-metrics.log")
    op.env = {"GAUDI3_STALL_POLL_SECONDS": "1", "GAUDI3_AUTOSCALE_INTERVAL_SECONDS": "2"}
    op.start("--prometheus-allowed-url", real.prometheus_url)
    ns = f"metrics-{os.getpid()}"
    checkpoints = real.dir / "checkpoints" / ns
    checkpoints.mkdir(parents=True)
    os.chown(checkpoints, realtraining.TRAINER_UID, -1)
    try:
        real.kubectl("create", "namespace", ns)
        realtraining.allow_host_access(real, ns)
        wait_for(
            lambda: real.kubectl("get", "sa", "default", "-n", ns, check=False).returncode == 0,
            timeout=30,
            what="the default service account",
        )
        body = job(JOB, checkpoints, real.prometheus_url)
        real.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(body))
        yield ns, checkpoints, op
    finally:
        real.kubectl("delete", "gtj", JOB, "-n", ns, "--wait=false", check=False)
        real.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        op.stop()
        # The next module's workers need these ports: leave when ours are gone.
        with contextlib.suppress(AssertionError):
            wait_for(lambda: not training_pods(real), timeout=60, what="our workers gone")


def query(real: Any, promql: str, at: str | None = None) -> list[dict[str, Any]]:
    params = {"query": promql, **({"time": at} if at else {})}
    r = httpx.get(f"{real.prometheus_url}/api/v1/query", params=params, timeout=5)
    r.raise_for_status()
    return list(r.json()["data"]["result"])


def status(real: Any, ns: str) -> dict[str, Any]:
    body = json.loads(real.kubectl("get", "gtj", JOB, "-n", ns, "-o", "json").stdout)
    return dict(body.get("status") or {})


def set_stall_timeout(real: Any, ns: str, seconds: int) -> None:
    patch = {"spec": {"failurePolicy": {"stallTimeoutSeconds": seconds}}}
    real.kubectl("patch", "gtj", JOB, "-n", ns, "--type=merge", "-p", json.dumps(patch))


def worker_pids(ns: str, index: int) -> list[int]:
    """Host PIDs of every process of one worker's container (the launcher and the training
    process it starts), found by the environment the operator gave them."""
    want = {
        f"GAUDI3_JOB_NAME={JOB}".encode(),
        f"GAUDI3_NAMESPACE={ns}".encode(),
        f"GAUDI3_WORKER_INDEX={index}".encode(),
    }
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if want <= set((entry / "environ").read_bytes().split(b"\0")):
                    found.append(int(entry.name))
    return found


def operator_step(op: OperatorProcess, ns: str) -> float:
    """The job's step as the operator's stall clock last read it (its metrics), or 0."""
    want = f'gaudi_operator_job_training_step{{gtj="{JOB}",gtj_namespace="{ns}"}}'
    for line in op.metrics().splitlines():
        if line.startswith(want):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_real_node_workers_are_scraped_with_the_labels_the_operator_queries(
    real: Any, watched: tuple[str, Path, OperatorProcess]
) -> None:
    ns, _, op = watched
    selector = f'gaudi3_train_step{{gtj="{JOB}",gtj_namespace="{ns}"}}'

    def both() -> list[dict[str, Any]] | None:
        found = query(real, selector)
        return found if len(found) == 2 and all(float(s["value"][1]) > 0 for s in found) else None

    series = wait_for(both, timeout=240, interval=2, what="the step of both workers")
    assert isinstance(series, list)
    by_pod = {s["metric"]["pod"]: s["metric"] for s in series}
    assert sorted(by_pod) == [f"{JOB}-worker-0", f"{JOB}-worker-1"], series
    for labels in by_pod.values():
        # The launcher's own labels, and the pod's from realnodes-sync's target file,
        # scraped as pods are (honor_labels false: the pod cannot set its namespace).
        assert labels["namespace"] == ns and labels["node"].startswith("gaudi3-real-")
        assert labels["job"] == "gaudi3-pods"
    assert sorted(labels["rank"] for labels in by_pod.values()) == ["0", "1"]
    assert len({labels["node"] for labels in by_pod.values()}) == 2
    first = max(float(s["value"][1]) for s in series)
    # The stall clock reads the same series (by the `namespace` label) and keeps the step
    # in memory and in the operator's metrics; status has the first step it saw.
    wait_for(
        lambda: operator_step(op, ns) > first,
        timeout=60,
        interval=1,
        what="the operator's step advancing",
    )
    assert (status(real, ns).get("progress") or {}).get("step") is not None
    for name in ("samples_per_second", "loss", "world_size"):
        assert len(query(real, f'gaudi3_train_{name}{{gtj="{JOB}",gtj_namespace="{ns}"}}')) == 2


def test_the_autoscaler_decides_on_the_launchers_throughput(
    real: Any, watched: tuple[str, Path, OperatorProcess]
) -> None:
    ns, _, _ = watched

    def decided() -> dict[str, Any] | None:
        last = (status(real, ns).get("autoscaling") or {}).get("lastDecision")
        return last if last and last.get("value") is not None else None

    last = wait_for(decided, timeout=240, interval=2, what="an autoscaler decision with a value")
    assert isinstance(last, dict)
    # More than maxReplicas wanted: held at 2, and said so.
    assert last["reason"] == "AtMaxReplicas" and last["replicas"] == 2, last
    assert last["desired"] > 2, last
    # The value is the launchers' summed throughput as Prometheus had it then.
    seconds = last["time"]
    rendered = THROUGHPUT.replace("$job", JOB).replace("$namespace", ns)
    then = query(real, rendered, at=seconds)
    assert then, f"no throughput in Prometheus at {seconds}"
    assert float(then[0]["value"][1]) == pytest.approx(last["value"], rel=0.25), (then, last)
    assert status(real, ns)["phase"] == "Running"  # it held: the world was not touched


def test_a_stopped_worker_is_detected_as_a_stall_and_the_world_resumes_from_checkpoint(
    real: Any, watched: tuple[str, Path, OperatorProcess]
) -> None:
    ns, checkpoints, _ = watched
    generation = int(status(real, ns).get("restartGeneration", 0))
    wait_for(
        lambda: [
            s for s in realtraining.checkpoint_steps(checkpoints) if s >= realtraining.INTERVAL
        ],
        timeout=240,
        interval=1,
        what=f"a checkpoint at step >= {realtraining.INTERVAL}",
    )
    pids = worker_pids(ns, 1)
    assert len(pids) >= 2, f"worker 1's launcher and training process, found {pids}"
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)  # alive, silent: only the step metric can tell
        # Shortened only now that the world is stopped: a stall found from here on is this
        # one, not a slow stretch of the running world.
        set_stall_timeout(real, ns, STALL_SECONDS)
        saved = realtraining.checkpoint_steps(checkpoints)[-1]

        def restarted() -> dict[str, Any] | None:
            st = status(real, ns)
            return st if int(st.get("restartGeneration", 0)) > generation else None

        st = wait_for(
            restarted, timeout=STALL_SECONDS + 90, interval=1, what="a restart after the stall"
        )
        assert isinstance(st, dict)
        failure = st["lastFailure"]
        assert failure["reason"] == "Stalled", failure
        assert f"for more than {STALL_SECONDS}s" in failure["message"], failure
    finally:
        set_stall_timeout(real, ns, LONG_STALL_SECONDS)  # the new world's start-up is slow
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def resumed() -> int | None:
        m = realtraining.RESUME_LINE.search(realtraining.logs(real, ns, JOB, generation + 1))
        return int(m.group(1)) if m else None

    try:
        step = wait_for(resumed, timeout=240, interval=2, what="the new world's resume")
    except AssertionError as e:
        pods = real.kubectl("get", "pods", "-n", ns, "-o", "wide", "--show-labels").stdout
        log = (real.dir / "logs" / "operator-metrics.log").read_text(errors="replace")
        tail = "\n".join(log.splitlines()[-40:])
        raise AssertionError(f"{e}\n{pods}\nstatus: {status(real, ns)}\noperator:\n{tail}") from e
    assert isinstance(step, int) and step >= saved > 0
    # The new world trains on: a step past the checkpoint, in the logs and in Prometheus.
    wait_for(
        lambda: [
            s
            for s, _ in realtraining.STEP_LINE.findall(
                realtraining.logs(real, ns, JOB, generation + 1)
            )
            if int(s) > step
        ],
        timeout=120,
        interval=2,
        what="a step after the resume",
    )
    # Prometheus has it from its next scrape of the new pods (the log line comes first).
    wait_for(
        lambda: (
            (now := query(real, f'max(gaudi3_train_step{{gtj="{JOB}",gtj_namespace="{ns}"}})'))
            and float(now[0]["value"][1]) > step
        ),
        timeout=60,
        interval=2,
        what="Prometheus to have a step after the resume",
    )
    assert int(status(real, ns)["restartGeneration"]) == generation + 1
