"""The operator's configuration, as `gaudi3 operator` passes it through kopf's memo."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class OperatorConfig:
    kubeconfig: str | None = None
    metrics_port: int = 8000
    metrics_address: str = "0.0.0.0"
    # Passes wait on the API server most of their time (1000 jobs with 8 workers: 28 s of
    # the operator's CPU in a 110 s run, docs/performance.md): more at once, not more CPU.
    workers: int = 32
    pod_concurrency: int = 32
    resync_seconds: float = 30.0
    # Workers' progress on the way to Running (counts, Scheduled, Pending -> Starting) is
    # written at most this late, or with the next other change (jobs.plan.progress_only):
    # a job costs at most two status writes to Running when it gets there within it
    # (docs/architecture.md); workers the scheduler cannot place are said within 5 s.
    status_debounce_seconds: float = 300.0
    watch_timeout: int = 300
    prometheus_url: str = ""
    # Further Prometheus URLs a job's spec.autoscaling.prometheusURL may name.
    prometheus_allowed_urls: tuple[str, ...] = ()
    # The label Prometheus' service discovery gives every series of a pod its namespace
    # in: a job's queries are limited to it ("" turns that off: single-tenant clusters).
    prometheus_namespace_label: str = "namespace"
    # status.progress is written on a transition, and otherwise at most this often (0:
    # transitions only); the step itself lives in memory and in the metrics.
    progress_status_interval: float = 600.0
    # Intel's pod contract (jobs.gaudi, docs/gaudi.md): huge pages per HPU in MiB (0: none),
    # and the node label of scale-out readiness, `key=value` or `key` ("" turns the gate off).
    hugepages_mi_per_hpu: int = 3624
    scale_out_label: str = "intel.feature.node.kubernetes.io/gaudi-scale-out=true"
