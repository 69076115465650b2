"""The write floor (issue 21), counted by the API server itself: from create to Running a
job of N workers costs the operator at most N + 4 writes (its pods, a Service only when it
can ever have a second worker, two status writes, one Normal event), nothing POSTed twice.

kube-apiserver's `apiserver_request_total` is read before the job is created and once it
runs (gaudi_devtools.benchmarks.writes). The counter has no client label: the operator's
writes are told apart by what they write, so an operator of its own watches only this
test's namespace, with the session's operator paused (SIGSTOP) meanwhile, as the soak test
does; the only other writers on the cluster then are the scheduler and kwok, whose writes
(bindings, pod status, events.k8s.io) are other resources, and kube-controller-manager's
endpoint controllers, which refuse kwok's loopback pod IPs (127.244.0.0/16) for the
job's Service and write core Events about it all along: the Event writes counted are the
operator's own, told by the Events' source (`writes.event_writes`).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cluster.gtj import (
    GROUP,
    PLURAL,
    OperatorProcess,
    create_job,
    events_for,
    job_body,
    wait_phase,
    worker_pods,
)
from gaudi_devtools.benchmarks.writes import controller_writes, event_writes, request_totals
from gaudi_operator.observability.events import EVENT_SOURCE

pytestmark = pytest.mark.cluster


def totals(kubectl: Any) -> Any:
    return request_totals(kubectl("get", "--raw", "/metrics", timeout=60).stdout)


@pytest.fixture
def own_operator(
    operator: OperatorProcess, cluster: Any, namespace: str, tmp_path: Path, hpus_free: Any
) -> Iterator[OperatorProcess]:
    hpus_free()
    paused = operator.proc if operator.proc is not None and operator.proc.poll() is None else None
    own = OperatorProcess(Path(cluster.kubeconfig), tmp_path / "floor-operator.log")
    if paused is not None:
        paused.send_signal(signal.SIGSTOP)
    try:
        own.start("--namespace", namespace)
        yield own
    except BaseException:
        print(own.tail(120))
        raise
    finally:
        own.stop()
        if paused is not None:
            paused.send_signal(signal.SIGCONT)


@pytest.mark.parametrize("workers", [1, 4])
def test_create_to_running_costs_at_most_n_plus_4_writes(
    own_operator: OperatorProcess,
    core: Any,
    custom: Any,
    kubectl: Any,
    namespace: str,
    workers: int,
) -> None:
    name = f"floor-{workers}"
    time.sleep(2)  # the operator's start-up listing settled
    before = totals(kubectl)
    create_job(custom, namespace, job_body(name, hpusPerWorker=1, workers={"replicas": workers}))
    wait_phase(custom, namespace, name, "Running", timeout=90)
    time.sleep(6)  # anything held back (the progress debounce) would be written by now
    w = controller_writes(before, totals(kubectl), GROUP, PLURAL)
    events = event_writes(kubectl("get", "events", "-n", namespace, "-o", "json").stdout)
    print(f"Event writes in the namespace by source: {events}")
    w = replace(w, events=events.get(EVENT_SOURCE, 0))  # the namespace is new: all of them
    print(f"{workers} workers, create -> Running: {w} (total {w.total}, floor {workers + 4})")
    assert w.pods == workers, "a worker was POSTed twice"
    assert w.services == (1 if workers > 1 else 0)
    assert w.status <= 2
    assert w.events <= 1
    assert w.other == 0
    assert w.total <= workers + 4
    # What the counters saw is what is there: the pods, the one Normal event.
    assert len(worker_pods(core, namespace, name)) == workers
    normal = [e.reason for e in events_for(core, namespace, name) if e.type == "Normal"]
    assert normal == ["CreatedWorkers"]


@pytest.fixture
def no_operator(operator: OperatorProcess, hpus_free: Any) -> Iterator[None]:
    """The session's operator paused, as the benchmark's write-floor run has none."""
    hpus_free()
    paused = operator.proc if operator.proc is not None and operator.proc.poll() is None else None
    if paused is not None:
        paused.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        if paused is not None:
            paused.send_signal(signal.SIGCONT)


def test_the_benchmarks_floor_run_makes_the_floors_writes_and_its_jobs_run(
    no_operator: None, cluster: Any
) -> None:
    """`benchmark reconcile --versus floor` on the real cluster: with no operator, the load
    generator's writes bring every job to Running, and the API server counts exactly the
    writes it claims (each job's pods, its Service, one status write; Events at least its
    own one: kube-controller-manager writes core Events about the Services too)."""
    import asyncio
    import uuid

    from gaudi_devtools.benchmarks.floor import run_floor
    from gaudi_devtools.benchmarks.reconcile import component_cpu

    ns = f"floor-run-{uuid.uuid4().hex[:6]}"
    r = asyncio.run(
        run_floor(str(cluster.kubeconfig), ns, 3, 2, 1, 120, component_cpu(cluster.procs))
    )
    w = r["writes"]
    print(f"floor run, 3 jobs x 2 workers: {r}")
    assert (w["pods"], w["services"], w["status"], w["other"]) == (2.0, 1.0, 1.0, 0.0)
    assert w["events"] >= 1.0
    assert 0 < r["first_running"] <= r["all_running"] and r["all_pods_running"] > 0
    assert r["cluster_cpu"]["kube-apiserver"] > 0 and r["cluster_cpu"]["load generator"] > 0
