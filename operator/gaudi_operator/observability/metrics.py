"""The operator's own Prometheus metrics; every name starts with `gaudi_operator_`."""

from __future__ import annotations

import threading
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gaudi_operator.api import Phase

JOBS = Gauge("gaudi_operator_jobs", "GaudiTrainingJobs seen by this operator, by phase", ["phase"])
PODS_CREATED = Counter("gaudi_operator_pods_created", "Worker pods created")
SPARES_PROMOTED = Counter(
    "gaudi_operator_spares_promoted", "Warm spares that took a lost worker's place"
)
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
CACHE_ENTRIES = Gauge(
    "gaudi_operator_cache_entries",
    "Entries in one of the operator's in-memory maps, read at scrape time: the per-job ones "
    "return to 0 once every job is deleted (the soak test and benchmark watch them)",
    ["cache"],
)


def track_cache(name: str, size: Callable[[], int]) -> None:
    """Publish `size()` as gaudi_operator_cache_entries{cache=name}, from the scrape's
    thread (so `size` only takes len()s). A later owner of the name replaces the earlier."""
    CACHE_ENTRIES.labels(cache=name).set_function(size)


class PhaseTracker:
    """Keeps gaudi_operator_jobs{phase} equal to the jobs' current phases, and each job's
    own series (phase, workers, conditions, restarts; `JOB_SERIES`) equal to its last
    reconcile pass."""

    def __init__(self) -> None:
        self._phases: dict[tuple[str, str], str] = {}
        track_cache("job_phases", lambda: len(self._phases))
        track_cache("job_conditions", JOB_SERIES.with_conditions)
        for phase in Phase:
            JOBS.labels(phase=phase.value).set(0)

    def set(
        self,
        key: tuple[str, str],
        phase: str,
        workers: Mapping[str, int] | None = None,
        conditions: Mapping[str, bool] | None = None,
    ) -> None:
        old = self._phases.get(key)
        self._phases[key] = phase
        JOB_SERIES.set(key, phase, workers, conditions)
        if old != phase:
            self._publish()

    def forget(self, key: tuple[str, str]) -> None:
        phase = self._phases.pop(key, None)
        JOB_SERIES.forget(key)
        if phase is None:
            return
        AUTOSCALE_DESIRED_REPLICAS.remove(*key)
        self._publish()

    def _publish(self) -> None:
        counts = Tally(self._phases.values())
        for phase in Phase:
            JOBS.labels(phase=phase.value).set(counts.get(phase.value, 0))


_serving: set[int] = set()


def serve(port: int, address: str = "0.0.0.0") -> None:
    """Serve /metrics from a daemon thread (prometheus-client's own; never the event loop).
    Once per port: a standby starts serving before kopf's start-up asks again."""
    if port and port not in _serving:
        start_http_server(port, addr=address)
        _serving.add(port)


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
HPU_FAULTS = Gauge(
    "gaudi_operator_hpu_faults",
    "Faulty cards held by pods in the last reading of the HPU health query, by kind "
    "(ecc, temperature, link, other); 0 once the exporter reports them healthy",
    ["kind"],
)


def set_hpu_faults(by_kind: Mapping[str, int]) -> None:
    """Publish one HPU health reading: every kind seen so far, 0 when none now."""
    for kind in ("ecc", "temperature", "link", "other", *by_kind):
        HPU_FAULTS.labels(kind=kind).set(by_kind.get(kind, 0))


# --- per job (controller.py after each pass, health.py on restarts; gone with the job) ----
# Labelled gtj/gtj_namespace like the launcher's series: `job` and `namespace` are target
# labels a ServiceMonitor scrape sets (the operator's own), and would clash.

JOB_WORKER_STATES = ("desired", "ready", "pending")
_JOB_LABELS = ("gtj_namespace", "gtj")


class _Job:
    """One job's series, as small as a few references: a prometheus-client child per
    series (ten a job) cost about 8.5 MiB at a thousand jobs."""

    __slots__ = ("conditions", "phase", "restarts", "workers")

    def __init__(self) -> None:
        self.phase = ""
        self.workers: tuple[int, ...] | None = None
        self.conditions: tuple[tuple[str, bool], ...] | None = None
        self.restarts = 0


class JobSeries(Collector):
    """The per-job series, built at scrape time from one small record per job:
    gaudi_operator_job_phase (1 for the current phase), gaudi_operator_job_workers
    (desired, ready, pending: 0 once finished or suspended; pending is pods in phase
    Pending), gaudi_operator_job_condition (1 True, 0 False) and
    gaudi_operator_job_restarts_total (failover restarts seen by this process, from 0 so
    that the first increase counts). Written from the event loop, read from the scrape's
    thread: under a lock."""

    def __init__(self) -> None:
        self._jobs: dict[tuple[str, str], _Job] = {}
        self._lock = threading.Lock()

    def set(
        self,
        key: tuple[str, str],
        phase: str,
        workers: Mapping[str, int] | None,
        conditions: Mapping[str, bool] | None,
    ) -> None:
        with self._lock:
            job = self._jobs.get(key) or self._jobs.setdefault(key, _Job())
            job.phase = phase
            if workers:
                before = dict(zip(JOB_WORKER_STATES, job.workers or (), strict=False))
                merged = {**before, **workers}
                job.workers = tuple(merged.get(s, 0) for s in JOB_WORKER_STATES)
            if conditions is not None:
                job.conditions = tuple(conditions.items())

    def restarted(self, namespace: str, name: str) -> None:
        with self._lock:
            job = self._jobs.get((namespace, name))
            if job is None:
                job = self._jobs[(namespace, name)] = _Job()
            job.restarts += 1

    def forget(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._jobs.pop(key, None)

    def with_conditions(self) -> int:
        return sum(1 for j in list(self._jobs.values()) if j.conditions)

    def collect(self) -> Iterator[Metric]:
        phase = GaugeMetricFamily(
            "gaudi_operator_job_phase",
            "1 for the job's current phase (one series per job)",
            labels=[*_JOB_LABELS, "phase"],
        )
        workers = GaugeMetricFamily(
            "gaudi_operator_job_workers",
            "The job's workers: desired (0 once finished or suspended), ready, and pending "
            "(pods in phase Pending: unscheduled or still starting)",
            labels=[*_JOB_LABELS, "state"],
        )
        condition = GaugeMetricFamily(
            "gaudi_operator_job_condition",
            "The job's status conditions: 1 when True, 0 when False",
            labels=[*_JOB_LABELS, "condition"],
        )
        restarts = CounterMetricFamily(
            "gaudi_operator_job_restarts",
            "Restarts of the job by failover seen by this operator process (counted against "
            "maxRestarts or not)",
            labels=list(_JOB_LABELS),
        )
        with self._lock:
            jobs = [
                (k, j.phase, j.workers, j.conditions, j.restarts) for k, j in self._jobs.items()
            ]
        for (ns, name), p, w, c, r in jobs:
            if p:
                phase.add_metric([ns, name, p], 1)
            for state, n in zip(JOB_WORKER_STATES, w or (), strict=False):
                workers.add_metric([ns, name, state], n)
            for type_, true in c or ():
                condition.add_metric([ns, name, type_], int(true))
            restarts.add_metric([ns, name], r)
        yield from (phase, workers, condition, restarts)


JOB_SERIES = JobSeries()
REGISTRY.register(JOB_SERIES)

# --- the stall clock (failover/stall.py): progress lives here and in memory, not status ----

JOB_TRAINING_STEP = Gauge(
    "gaudi_operator_job_training_step",
    "The job's training step (max over ranks) as the stall clock last read it from Prometheus",
    ["gtj_namespace", "gtj"],
)
JOB_STEP_ADVANCED = Gauge(
    "gaudi_operator_job_step_advanced_timestamp_seconds",
    "When the job's training step last advanced (Unix time), as the stall clock saw it",
    ["gtj_namespace", "gtj"],
)
STALL_SWEEP_SECONDS = Histogram(
    "gaudi_operator_stall_sweep_duration_seconds",
    "Duration of one sweep of the stall clock over every running job",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
PROGRESS_WRITES = Counter(
    "gaudi_operator_progress_status_writes",
    "status.progress writes by the stall clock, by why (progress: first step or the "
    "periodic record; stalled: the step stopped for the stall timeout)",
    ["why"],
)

LOOP_RESTARTS = Counter(
    "gaudi_operator_loop_restarts",
    "Restarts of a background loop (controller workers, resync, autoscaler, stall clock) "
    "after it raised",
    ["loop"],
)

LEADER = Gauge(
    "gaudi_operator_leader",
    "1 while this process holds the leader Lease (or runs without leader election), 0 as a standby",
)
