"""The operator's per-job series follow the job's last reconcile pass and leave with it."""

from __future__ import annotations

from prometheus_client import REGISTRY

from gaudi_operator.observability import metrics

KEY = ("team-a", "llama")


def value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"gtj_namespace": "team-a", "gtj": "llama", **labels})


def test_a_job_has_one_phase_series_that_follows_its_phase() -> None:
    tracker = metrics.PhaseTracker()
    tracker.set(KEY, "Starting")
    tracker.set(KEY, "Running")
    assert value("gaudi_operator_job_phase", phase="Running") == 1
    assert value("gaudi_operator_job_phase", phase="Starting") is None
    tracker.forget(KEY)


def test_workers_and_conditions_are_published_and_dropped_conditions_disappear() -> None:
    tracker = metrics.PhaseTracker()
    tracker.set(
        KEY,
        "Running",
        workers={"desired": 4, "ready": 3, "pending": 1},
        conditions={"Ready": False, "MetricsUnavailable": True},
    )
    assert value("gaudi_operator_job_workers", state="pending") == 1
    assert value("gaudi_operator_job_workers", state="desired") == 4
    assert value("gaudi_operator_job_condition", condition="MetricsUnavailable") == 1
    assert value("gaudi_operator_job_condition", condition="Ready") == 0
    tracker.set(KEY, "Running", conditions={"Ready": True})
    assert value("gaudi_operator_job_condition", condition="MetricsUnavailable") is None
    assert value("gaudi_operator_job_condition", condition="Ready") == 1
    tracker.forget(KEY)


def test_the_restart_counter_starts_at_zero_so_its_first_increase_counts() -> None:
    tracker = metrics.PhaseTracker()
    tracker.set(KEY, "Running")
    assert value("gaudi_operator_job_restarts_total") == 0
    metrics.JOB_SERIES.restarted("team-a", "llama")
    assert value("gaudi_operator_job_restarts_total") == 1
    tracker.forget(KEY)


def test_forgetting_a_deleted_job_removes_all_its_series() -> None:
    tracker = metrics.PhaseTracker()
    tracker.set(
        KEY,
        "Failed",
        workers={"desired": 0, "ready": 0, "pending": 0},
        conditions={"Failed": True},
    )
    metrics.AUTOSCALE_DESIRED_REPLICAS.labels(namespace="team-a", job="llama").set(2)
    tracker.forget(KEY)
    desired = {"namespace": "team-a", "job": "llama"}
    assert REGISTRY.get_sample_value("gaudi_operator_autoscale_desired_replicas", desired) is None
    for name, labels in (
        ("gaudi_operator_job_phase", {"phase": "Failed"}),
        ("gaudi_operator_job_workers", {"state": "desired"}),
        ("gaudi_operator_job_condition", {"condition": "Failed"}),
        ("gaudi_operator_job_restarts_total", {}),
    ):
        assert value(name, **labels) is None, name
    assert REGISTRY.get_sample_value("gaudi_operator_jobs", {"phase": "Failed"}) == 0
