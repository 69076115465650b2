"""The operator's own Prometheus metrics; every name starts with `gaudi_operator_`."""

from __future__ import annotations

from collections import Counter as Tally

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from gaudi_operator.api import Phase

JOBS = Gauge("gaudi_operator_jobs", "GaudiTrainingJobs seen by this operator, by phase", ["phase"])
PODS_CREATED = Counter("gaudi_operator_pods_created", "Worker pods created")
PODS_DELETED = Counter("gaudi_operator_pods_deleted", "Worker pods deleted", ["reason"])
RECONCILE_SECONDS = Histogram(
    "gaudi_operator_reconcile_duration_seconds",
    "Duration of one reconcile pass of one job",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RECONCILE_ERRORS = Counter(
    "gaudi_operator_reconcile_errors", "Reconcile passes that raised, by error kind", ["kind"]
)
INVALID_SPECS = Counter("gaudi_operator_invalid_specs", "Jobs found with an unusable spec")
QUEUE_DEPTH = Gauge("gaudi_operator_workqueue_depth", "Jobs waiting for a reconcile pass")


class PhaseTracker:
    """Keeps gaudi_operator_jobs{phase} equal to the jobs' current phases."""

    def __init__(self) -> None:
        self._phases: dict[tuple[str, str], str] = {}
        for phase in Phase:
            JOBS.labels(phase=phase.value).set(0)

    def set(self, key: tuple[str, str], phase: str) -> None:
        self._phases[key] = phase
        self._publish()

    def forget(self, key: tuple[str, str]) -> None:
        if self._phases.pop(key, None) is not None:
            self._publish()

    def _publish(self) -> None:
        counts = Tally(self._phases.values())
        for phase in Phase:
            JOBS.labels(phase=phase.value).set(counts.get(phase.value, 0))


def serve(port: int) -> None:
    """Serve /metrics from a daemon thread (prometheus-client's own; never the event loop)."""
    if port:
        start_http_server(port)


# --- autoscaling (autoscaler.py) --------------------------------------------------------

AUTOSCALE_DECISIONS = Counter(
    "gaudi_operator_autoscale_decisions",
    "Autoscaler decisions by direction (up, down, none) and reason",
    ["direction", "reason"],
)
AUTOSCALE_DESIRED_REPLICAS = Gauge(
    "gaudi_operator_autoscale_desired_replicas",
    "Workers the autoscaler currently wants for a job",
    ["namespace", "job"],
)
AUTOSCALE_QUERY_ERRORS = Counter(
    "gaudi_operator_autoscale_query_errors",
    "Failed Prometheus queries of the autoscaler, by kind (unreachable, bad_query, empty)",
    ["kind"],
)


# --- failover (failover.py, health.py) ---------------------------------------------------

FAILURES = Counter(
    "gaudi_operator_worker_failures",
    "Worker failures detected, by reason (Error, OOMKilled, Evicted, NodeLost, ...)",
    ["reason"],
)
RESTARTS = Counter(
    "gaudi_operator_restarts",
    "Job restarts by failover, by strategy and whether maxRestarts counted them",
    ["strategy", "counted"],
)
FAILOVER_LATENCY = Histogram(
    "gaudi_operator_failover_latency_seconds",
    "From a failure being detected (its pod finished, or a node's grace ran out) to its "
    "replacement workers being created (stage=created) and all running (stage=running)",
    ["stage"],
    buckets=(0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 120, 300, 600),
)
