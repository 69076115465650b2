"""Kueue admission without Workload events: an operator whose Workload watch delivers
nothing (a failpoint drops every event; in a real cluster, kopf serves Workloads only once
API discovery lists them, so an operator started before Kueue can miss them) still admits,
lets a deleted job's Workload go, and notices a preemption, from its own passes (every
queued job each resync interval: 5 s for the tests' operator)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from cluster.gtj import create_job, wait_phase, wait_running_workers, worker_pods
from cluster.queueing.support import queued_job, wait_admitted, wait_queued, workload_of
from conftest import wait_for


@pytest.fixture
def deaf_operator(operator: Any) -> Iterator[Any]:
    # SIGKILL, not a graceful stop: quicker, and the operator must take it anyway.
    operator.kill()
    operator.env = {"GAUDI3_FAILPOINTS": "drop-workload-events"}
    try:
        operator.start()
        yield operator
    finally:
        operator.kill()
        operator.env = {}
        operator.start()


def test_admission_deletion_and_preemption_converge_without_workload_events(
    queue: dict[str, str],
    priority_classes: dict[str, str],
    deaf_operator: Any,
    core: Any,
    custom: Any,
    kubectl: Any,
    namespace: str,
    hpus_free: Any,
) -> None:
    hpus_free()
    low = priority_classes["low"]
    create_job(custom, namespace, queued_job("first", queue["local"], low))
    wait_admitted(custom, namespace, "first")
    wait_running_workers(core, namespace, "first", 2)
    create_job(custom, namespace, queued_job("second", queue["local"], low))
    wait_queued(custom, namespace, "second", reason="Pending")
    assert worker_pods(core, namespace, "second") == []

    kubectl("delete", "gtj", "first", "-n", namespace, "--wait=false")
    wait_for(
        lambda: workload_of(custom, namespace, "first") is None,
        timeout=60,
        what="first's Workload gone after its workers",
    )
    wait_admitted(custom, namespace, "second")
    wait_running_workers(core, namespace, "second", 2)
    wait_phase(custom, namespace, "second", "Running")

    # Kueue evicts `second` for a higher priority: only its Workload says so.
    create_job(custom, namespace, queued_job("urgent", queue["local"], priority_classes["high"]))
    wait_queued(custom, namespace, "second", reason="Preempted")
    wait_for(
        lambda: worker_pods(core, namespace, "second") == [],
        timeout=60,
        what="second's workers gone",
    )
    wait_admitted(custom, namespace, "urgent")
    wait_running_workers(core, namespace, "urgent", 2)
    assert "failpoint drop-workload-events: active" in deaf_operator.tail(400)
