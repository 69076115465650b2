"""Quiet at rest, from the API server's own request counters: kwok jobs that train (their
step moves every half second) and change nothing cost at most 0.2 job writes a minute,
the autoscaled ones included, and an operator restart adds none (it rebuilds its clocks
and the autoscaler's windows without writing). `gaudi3 benchmark rest` is the long run."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import wait_for
from gaudi_devtools.benchmarks.rest import (
    BUDGET,
    TrainingExporter,
    apply_kwok_jobs,
    job_status,
    measure,
)

pytestmark = pytest.mark.cluster

JOBS = 12
AUTOSCALED = 6
WINDOW = 30  # seconds counted while running; 12 jobs x 0.5 min: 1 write is within budget
AFTER_RESTART = 20


def others(cluster: Any, namespace: str) -> list[str]:
    """GaudiTrainingJobs of any namespace but this test's."""
    out = cluster.kubectl("get", "gtj", "-A", "-o", "json").stdout
    return [
        f"{j['metadata']['namespace']}/{j['metadata']['name']}"
        for j in json.loads(out)["items"]
        if j["metadata"]["namespace"] != namespace
    ]


@pytest.fixture
def rest_operator(operator: Any, cluster: Any) -> Iterator[Any]:
    """The operator with both loops as fast as the tests run them (each pass a chance to
    write), on the cluster's Prometheus."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GAUDI3_STALL_POLL_SECONDS", "1")
        mp.setenv("GAUDI3_AUTOSCALE_INTERVAL_SECONDS", "1")
        operator.restart("--prometheus-url", cluster.prometheus_url)
        yield operator


def test_training_jobs_at_rest_cost_at_most_a_fifth_of_a_write_a_minute(
    rest_operator: Any, cluster: Any, namespace: str, hpus_free: Any
) -> None:
    hpus_free()
    exporter = TrainingExporter(cluster.targets_dir, f"rest-{namespace}", period=0.5)
    try:
        all_settled = apply_kwok_jobs(cluster, namespace, exporter, JOBS, AUTOSCALED)
        wait_for(all_settled, timeout=120, interval=1, what="jobs running, first step recorded")
        # The API server's counters have no namespace: earlier tests' jobs still being deleted
        # with their namespaces would count (two DELETEs in a window failed a run).
        wait_for(
            lambda: not others(cluster, namespace),
            timeout=120,
            interval=1,
            what="no other namespace's job left (earlier tests' deletes done)",
        )
        running = measure(cluster, JOBS, WINDOW, exporter.steps)
        assert running.steps_advanced >= WINDOW, running  # every job trained all along
        assert running.per_job_per_minute <= BUDGET, running.writes

        rest_operator.kill()
        rest_operator.start("--prometheus-url", cluster.prometheus_url)
        restarted = measure(cluster, JOBS, AFTER_RESTART, exporter.steps)
        assert restarted.total == 0, restarted.writes
        st = job_status(cluster, namespace)
        assert all(s.get("phase") == "Running" and not s.get("restarts") for s in st.values()), st
    finally:
        exporter.close()
