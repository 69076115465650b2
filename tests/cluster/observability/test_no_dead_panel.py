"""No dead panel: every PromQL expression of the shipped Grafana dashboards and alert rules
returns series from the local cluster's Prometheus, which scrapes the real operator
(reconciling real jobs: one training, one autoscaled on a metric that has no series, one
that fails after a restart, one whose Service a quota refuses) and the real launcher
training on CPU with the labels of one of those jobs.

Alerts and annotations are queried without their threshold comparison (the series they
are made of): a quiet alert must still be looking at something.

Documented exception: expressions over the Gaudi exporter's `habanalabs_*` series cannot
return series here (no exporter, no HPU on a test machine, and a fake exporter would prove
nothing about the real one's names). For those the test only checks that Prometheus
accepts the query.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client

from chaos import fail_pod
from cluster.gtj import (
    ROOT,
    create_job,
    free_port,
    get_job,
    job_body,
    wait_phase,
    wait_running_workers,
)
from conftest import wait_for
from monitoring import (
    Expression,
    alert_expressions,
    dashboard_expressions,
    substitute,
    underlying,
)

pytestmark = pytest.mark.cluster

# The labels a ServiceMonitor scrape of the chart's Service gives the operator's series
# (release gaudi-operator in gaudi-system); the operator alerts select on them.
OPERATOR_TARGET = {"job": "gaudi-operator-metrics", "namespace": "gaudi-system"}
TRAIN = "train"  # the job the launcher reports for, and the one-job dashboard shows


@contextlib.contextmanager
def scraped(
    cluster: Any, name: str, port: int, labels: dict[str, str] | None = None
) -> Iterator[None]:
    """Make 127.0.0.1:port a target of the cluster's Prometheus (file-based discovery)."""
    path = Path(cluster.targets_dir) / f"{name}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([{"targets": [f"127.0.0.1:{port}"], "labels": labels or {}}]))
    tmp.rename(path)  # atomic: Prometheus never reads half a file
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def entry_point(script: str) -> list[str]:
    """Run a console script of this checkout's pyproject.toml on this checkout's code: the
    installed script may belong to another tree (an editable install elsewhere)."""
    target = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"][script]
    module, func = target.split(":")
    code = f"import sys; sys.argv[0] = {script!r}; from {module} import {func}; sys.exit({func}())"
    return [sys.executable, "-c", code]


@contextlib.contextmanager
def checkout_operator(operator: Any, cluster: Any) -> Iterator[Any]:
    """The session's operator restarted on this checkout's code, with Prometheus and a 1 s
    autoscaler loop; restarted as it was afterwards."""
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "GAUDI3_AUTOSCALE_INTERVAL_SECONDS")}
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT / "operator"), saved["PYTHONPATH"]])
    )
    os.environ["GAUDI3_AUTOSCALE_INTERVAL_SECONDS"] = "1"
    # OperatorProcess runs the checkout's gaudi_operator (PYTHONPATH) already.
    try:
        operator.restart("--prometheus-url", cluster.prometheus_url)
        yield operator
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        operator.restart()


@contextlib.contextmanager
def launcher(
    namespace: str, job: str, port: int, workdir: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """`gaudi3-train` from this checkout on CPU, one rank, metrics on 127.0.0.1:port."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PET_", "GAUDI3_", "TORCHELASTIC"))
    }
    env.update(
        PYTHONPATH=os.pathsep.join(
            filter(None, [str(ROOT / "training-image"), env.get("PYTHONPATH")])
        ),
        OMP_NUM_THREADS="1",
        GAUDI3_DEVICE="cpu",
        GAUDI3_JOB_NAME=job,
        GAUDI3_NAMESPACE=namespace,
        GAUDI3_METRICS_PORT=str(port),
        GAUDI3_METRICS_ADDRESS="127.0.0.1",
    )
    args = ["--nproc", "1", "--max-steps", "1000000", "--checkpoint-dir", str(workdir / "ckpt"),
            "--checkpoint-interval", "50"]  # fmt: skip
    with (workdir / "launcher.log").open("wb") as log:
        proc = subprocess.Popen(
            [*entry_point("gaudi3-train"), *args], env=env, stdout=log, stderr=log
        )
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)  # it checkpoints and stops its workers
        try:
            proc.wait(40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def query(cluster: Any, promql: str) -> list[dict[str, Any]]:
    resp = httpx.get(f"{cluster.prometheus_url}/api/v1/query", params={"query": promql}, timeout=10)
    body = resp.json()
    assert body.get("status") == "success", f"Prometheus refused {promql!r}: {body}"
    return body["data"]["result"]


def autoscaled(name: str, query_: str) -> dict[str, Any]:
    return job_body(
        name,
        hpusPerWorker=1,
        workers={"replicas": 1, "minReplicas": 1, "maxReplicas": 2},
        autoscaling={
            "enabled": True,
            "metric": {"query": query_, "target": 1e9, "type": "AverageValue"},
            "cooldownSeconds": 0,
            "scaleUp": {"stabilizationSeconds": 0},
            "scaleDown": {"stabilizationSeconds": 0},
        },
    )


def fail_after_a_restart(core: Any, custom: Any, ns: str, name: str) -> None:
    """Failover restarts the job once (exit 1), then a Fail rule ends it (exit 2)."""
    policy = {"backoffSeconds": 0, "rules": [{"exitCodes": [2], "action": "Fail"}]}
    create_job(
        custom, ns, job_body(name, hpusPerWorker=1, workers={"replicas": 1}, failurePolicy=policy)
    )
    wait_running_workers(core, ns, name, 1, timeout=90)
    fail_pod(core, ns, f"{name}-worker-0", exit_code=1)
    wait_for(
        lambda: (get_job(custom, ns, name).get("status") or {}).get("restarts") == 1,
        timeout=60,
        what=f"{name} restarted",
    )
    wait_phase(custom, ns, name, "Running", timeout=60)
    wait_running_workers(core, ns, name, 1, timeout=60)
    fail_pod(core, ns, f"{name}-worker-0", exit_code=2)
    wait_phase(custom, ns, name, "Failed", timeout=60)


@contextlib.contextmanager
def quota_refuses_services(core: Any, name: str) -> Iterator[str]:
    """A namespace where a ResourceQuota refuses every Service: a job there cannot get its
    headless Service, so its reconcile passes fail (and are retried with backoff)."""
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    quota = client.V1ResourceQuota(
        metadata=client.V1ObjectMeta(name="no-services"),
        spec=client.V1ResourceQuotaSpec(hard={"services": "0"}),
    )
    core.create_namespaced_resource_quota(name, quota)
    try:
        yield name
    finally:
        with contextlib.suppress(client.ApiException):
            core.delete_namespace(name)


def pending_series(
    cluster: Any, exprs: list[tuple[Expression, str]]
) -> list[tuple[Expression, str]]:
    return [(e, q) for e, q in exprs if not query(cluster, q)]


def test_every_dashboard_and_alert_expression_returns_series(
    operator: Any, cluster: Any, core: Any, custom: Any, namespace: str, tmp_path: Path
) -> None:
    ns = namespace
    exprs = [
        (e, q)
        for e in [*dashboard_expressions(), *alert_expressions()]
        for q in underlying(substitute(e.promql, ns, TRAIN))
    ]
    live = [(e, q) for e, q in exprs if not e.needs_hpus]
    hpu = [(e, q) for e, q in exprs if e.needs_hpus]
    assert live and hpu

    with (
        checkout_operator(operator, cluster) as op,
        scraped(cluster, f"{ns}-operator", op.metrics_port, OPERATOR_TARGET),
        quota_refuses_services(core, f"{ns}-quota") as refused,
    ):
        # Scraped before anything happens, so counters and histograms show the events.
        up = 'up{job="gaudi-operator-metrics", namespace="gaudi-system"} == 1'
        wait_for(lambda: query(cluster, up), timeout=60, what="the operator scraped")
        own = 'sum(gaudi3_train_samples_per_second{gtj="$job",gtj_namespace="$namespace"})'
        create_job(custom, ns, autoscaled(TRAIN, own))
        create_job(custom, ns, autoscaled("blind", 'sum(no_such_metric{gtj="$job"})'))
        # Two workers at most: a one-worker job has no Service to refuse.
        refused_job = job_body(
            "refused", hpusPerWorker=1, workers={"replicas": 1, "maxReplicas": 2}
        )
        create_job(custom, refused, refused_job)
        fail_after_a_restart(core, custom, ns, "doomed")
        wait_phase(custom, ns, TRAIN, "Running", timeout=60)

        port = free_port()
        with launcher(ns, TRAIN, port, tmp_path) as proc, scraped(cluster, f"{ns}-launcher", port):
            deadline = time.monotonic() + 150
            dead = pending_series(cluster, live)
            while dead and time.monotonic() < deadline:
                assert proc.poll() is None, (tmp_path / "launcher.log").read_text()[-3000:]
                time.sleep(2)
                dead = pending_series(cluster, dead)
            for _, q in hpu:
                query(cluster, q)  # accepted by Prometheus; no series without an exporter

    assert not dead, "expressions without series:\n" + "\n".join(
        f"  {e.where}: {q}" for e, q in dead
    )
