"""The Grafana dashboards, as code (grafana-foundation-sdk), written into the Helm chart.

    python dashboards/build.py           # (re)write charts/gaudi-operator/files/dashboards/
    python dashboards/build.py --check   # exit 1 when the committed JSON is not what this builds

Two dashboards: the operator's health, and one training job (pick namespace and job). Every
query names metrics the operator (`gaudi_operator_*`), the launcher (`gaudi3_train_*`) or
Intel's Gaudi exporter (`habanalabs_*`) exports; tests run each one against a real Prometheus.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    VariableRefresh,
    VariableSort,
)

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "charts" / "gaudi-operator" / "files" / "dashboards"
DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
TAGS = ["gaudi", "gaudi-operator"]

# One job's series: the operator labels them gtj/gtj_namespace, like the launcher does.
JOB = 'gtj_namespace="$namespace", gtj="$job"'
# The Gaudi exporter labels each device with the pod holding it (kubelet pod-resources).
HPU = 'pod_namespace="$namespace", pod_name=~"$job-worker-[0-9]+"'


def query(expr: str, legend: str = "", ref: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend or "__auto").ref_id(ref)


def graph(
    title: str, description: str, unit: str, *queries: prometheus.Dataquery, w: int = 12
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DS)
        .unit(unit)
        .span(w)
        .height(8)
        .line_width(1)
        .fill_opacity(10)
        .legend(
            cb.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
    )
    for q in queries:
        panel = panel.with_target(q)
    return panel


def single(
    title: str, description: str, unit: str, q: prometheus.Dataquery, text: str = "value"
) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DS)
        .unit(unit)
        .span(4)
        .height(4)
        .graph_mode(common.BigValueGraphMode.NONE)
        .color_mode(common.BigValueColorMode.NONE)
        .text_mode(common.BigValueTextMode(text))
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]))
        .with_target(q.instant())
    )


def datasource_variable() -> db.DatasourceVariable:
    return db.DatasourceVariable("datasource").label("Data source").type("prometheus")


def base(uid: str, title: str, description: str) -> db.Dashboard:
    return (
        db.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .editable()
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .time("now-3h", "now")
        .refresh("30s")
        .timezone("browser")
        .with_variable(datasource_variable())
    )


def operator_health() -> db.Dashboard:
    rate = "[$__rate_interval]"
    return (
        base(
            "gaudi-operator-health",
            "Gaudi operator health",
            "The GaudiTrainingJob operator: reconcile passes, its queue, jobs and pods, "
            "failover and the autoscaler.",
        )
        .with_row(db.Row("Reconcile"))
        .with_panel(
            graph(
                "Reconcile passes",
                "Reconcile passes per second, all jobs (failed passes included).",
                "ops",
                query(
                    f"sum(rate(gaudi_operator_reconcile_duration_seconds_count{rate}))", "passes"
                ),
                w=8,
            )
        )
        .with_panel(
            graph(
                "Reconcile duration",
                "Time of one reconcile pass of one job: median and 99th percentile.",
                "s",
                query(
                    "histogram_quantile(0.5, sum by (le) "
                    f"(rate(gaudi_operator_reconcile_duration_seconds_bucket{rate})))",
                    "p50",
                ),
                query(
                    "histogram_quantile(0.99, sum by (le) "
                    f"(rate(gaudi_operator_reconcile_duration_seconds_bucket{rate})))",
                    "p99",
                    "B",
                ),
                w=8,
            )
        )
        .with_panel(
            graph(
                "Reconcile errors",
                "Reconcile passes that raised, per second, by error kind (the operator's log "
                "says which job and why; it retries with backoff).",
                "ops",
                query(
                    f"sum by (kind) (rate(gaudi_operator_reconcile_errors_total{rate}))", "{{kind}}"
                ),
                w=8,
            )
        )
        .with_panel(
            graph(
                "Work queue depth",
                "Jobs waiting for a reconcile pass. Growing without bound: the operator cannot "
                "keep up.",
                "short",
                query("sum(gaudi_operator_workqueue_depth)", "waiting"),
                w=8,
            )
        )
        .with_panel(
            graph(
                "Jobs by phase",
                "GaudiTrainingJobs this operator sees, by status.phase.",
                "short",
                query("sum by (phase) (gaudi_operator_jobs)", "{{phase}}"),
                w=8,
            )
        )
        .with_panel(
            graph(
                "Worker pods created and deleted",
                "Pods per second the operator created, and deleted by reason (surplus, suspend, "
                "cleanup, failover).",
                "ops",
                query(f"sum(rate(gaudi_operator_pods_created_total{rate}))", "created"),
                query(
                    f"sum by (reason) (rate(gaudi_operator_pods_deleted_total{rate}))",
                    "deleted: {{reason}}",
                    "B",
                ),
                w=8,
            )
        )
        .with_row(db.Row("Failover"))
        .with_panel(
            graph(
                "Worker failures",
                "Failures detected per second, by reason (Error, OOMKilled, Evicted, NodeLost, "
                "HPUUnhealthy, Stalled, ...).",
                "ops",
                query(
                    f"sum by (reason) (rate(gaudi_operator_worker_failures_total{rate}))",
                    "{{reason}}",
                ),
                w=8,
            )
        )
        .with_panel(
            graph(
                "Restarts",
                "Job restarts per second by strategy, and whether maxRestarts counted them.",
                "ops",
                query(
                    f"sum by (strategy, counted) (rate(gaudi_operator_restarts_total{rate}))",
                    "{{strategy}} (counted: {{counted}})",
                ),
                w=8,
            )
        )
        .with_panel(
            graph(
                "Failover latency",
                "From a failure detected to its replacement workers created and all running "
                "again: 95th percentile.",
                "s",
                query(
                    "histogram_quantile(0.95, sum by (le, stage) "
                    f"(rate(gaudi_operator_failover_latency_seconds_bucket{rate})))",
                    "p95 {{stage}}",
                ),
                w=8,
            )
        )
        .with_row(db.Row("Autoscaler"))
        .with_panel(
            graph(
                "Autoscaler decisions",
                "Decisions per second by direction (up, down, none) and reason.",
                "ops",
                query(
                    "sum by (direction, reason) "
                    f"(rate(gaudi_operator_autoscale_decisions_total{rate}))",
                    "{{direction}}: {{reason}}",
                ),
            )
        )
        .with_panel(
            graph(
                "Autoscaler query errors",
                "Failed Prometheus queries per second by kind: unreachable, bad_query, empty "
                "(the metric has no series), no_url (no Prometheus configured). Jobs hold their "
                "size meanwhile.",
                "ops",
                query(
                    f"sum by (kind) (rate(gaudi_operator_autoscale_query_errors_total{rate}))",
                    "{{kind}}",
                ),
            )
        )
    )


def training_job() -> db.Dashboard:
    rate = "[$__rate_interval]"
    return (
        base(
            "gaudi-training-job",
            "Gaudi training job",
            "One GaudiTrainingJob: its workers and phase from the operator, training progress "
            "per rank from the launcher, HPU utilisation from the Gaudi exporter. Restarts and "
            "resizes are annotations.",
        )
        .with_variable(
            db.QueryVariable("namespace")
            .label("Namespace")
            .datasource(DS)
            .query("label_values(gaudi_operator_job_phase, gtj_namespace)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
        )
        .with_variable(
            db.QueryVariable("job")
            .label("Job")
            .datasource(DS)
            .query('label_values(gaudi_operator_job_phase{gtj_namespace="$namespace"}, gtj)')
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
        )
        .annotation(
            db.AnnotationQuery()
            .name("Restarts")
            .datasource(DS)
            .enable(True)
            .icon_color("red")
            .expr(f"changes(gaudi_operator_job_restarts_total{{{JOB}}}[1m]) > 0")
        )
        .annotation(
            db.AnnotationQuery()
            .name("Resizes")
            .datasource(DS)
            .enable(True)
            .icon_color("blue")
            .expr(f'changes(gaudi_operator_job_workers{{{JOB}, state="desired"}}[1m]) > 0')
        )
        .with_row(db.Row("Job"))
        .with_panel(
            single(
                "Phase",
                "status.phase, as the operator last reconciled it.",
                "none",
                query(f"max by (phase) (gaudi_operator_job_phase{{{JOB}}})", "{{phase}}"),
                text="name",
            )
        )
        .with_panel(
            single(
                "World size",
                "Processes in the current torch-distributed world (launcher).",
                "none",
                query(f"max(gaudi3_train_world_size{{{JOB}}})", "world size"),
            )
        )
        .with_panel(
            single(
                "Step",
                "Optimizer steps completed (global; resumes from the checkpoint).",
                "none",
                query(f"max(gaudi3_train_step{{{JOB}}})", "step"),
            )
        )
        .with_panel(
            single(
                "Samples/s",
                "Training throughput of the whole job (sum over ranks).",
                "none",
                query(f"sum(gaudi3_train_samples_per_second{{{JOB}}})", "samples/s"),
            )
        )
        .with_panel(
            single(
                "Restarts in range",
                "Failover restarts of this job in the dashboard's time range.",
                "none",
                query(
                    f"sum(increase(gaudi_operator_job_restarts_total{{{JOB}}}[$__range]))",
                    "restarts",
                ),
            )
        )
        .with_panel(
            single(
                "Last checkpoint age",
                "Seconds since the last complete checkpoint (launcher).",
                "s",
                query(
                    f"time() - max(gaudi3_train_last_checkpoint_timestamp_seconds{{{JOB}}})",
                    "age",
                ),
            )
        )
        .with_panel(
            graph(
                "Workers",
                "Desired workers (spec.workers.replicas), ready ones, and pods still Pending "
                "(unscheduled or starting).",
                "short",
                query(f"max by (state) (gaudi_operator_job_workers{{{JOB}}})", "{{state}}"),
            )
        )
        .with_panel(
            graph(
                "World size",
                "Processes in the torch-distributed world; changes on every resize.",
                "short",
                query(f"max(gaudi3_train_world_size{{{JOB}}})", "world size"),
            )
        )
        .with_row(db.Row("Training"))
        .with_panel(
            graph(
                "Step",
                "Optimizer steps completed. A flat line while the job is Running is a stall.",
                "short",
                query(f"max(gaudi3_train_step{{{JOB}}})", "step"),
            )
        )
        .with_panel(
            graph(
                "Loss per rank",
                "Last training loss of each rank.",
                "short",
                query(f"max by (rank) (gaudi3_train_loss{{{JOB}}})", "rank {{rank}}"),
            )
        )
        .with_panel(
            graph(
                "Samples/s per rank",
                "Each rank's recent throughput. One rank far below the others is a slow HPU "
                "or node.",
                "short",
                query(f"max by (rank) (gaudi3_train_samples_per_second{{{JOB}}})", "rank {{rank}}"),
            )
        )
        .with_panel(
            graph(
                "Step time",
                "Time per optimizer step over all ranks: median and 95th percentile.",
                "s",
                query(
                    "histogram_quantile(0.5, sum by (le) "
                    f"(rate(gaudi3_train_step_seconds_bucket{{{JOB}}}{rate})))",
                    "p50",
                ),
                query(
                    "histogram_quantile(0.95, sum by (le) "
                    f"(rate(gaudi3_train_step_seconds_bucket{{{JOB}}}{rate})))",
                    "p95",
                    "B",
                ),
            )
        )
        .with_row(db.Row("HPUs (Gaudi exporter)"))
        .with_panel(
            graph(
                "HPU utilisation per worker",
                "Mean utilisation of the HPUs each worker pod holds (habanalabs_utilization).",
                "percent",
                query(
                    f"avg by (pod_name) (habanalabs_utilization{{{HPU}}})",
                    "{{pod_name}}",
                ),
            )
        )
        .with_panel(
            graph(
                "HPU memory used per worker",
                "Share of HBM in use on each worker's HPUs.",
                "percentunit",
                query(
                    f"sum by (pod_name) (habanalabs_memory_used_bytes{{{HPU}}}) / "
                    f"sum by (pod_name) (habanalabs_memory_total_bytes{{{HPU}}})",
                    "{{pod_name}}",
                ),
            )
        )
        .with_panel(
            graph(
                "HPU power per worker",
                "Power drawn by each worker's HPUs.",
                "watt",
                query(
                    f"sum by (pod_name) (habanalabs_power_mW{{{HPU}}}) / 1000",
                    "{{pod_name}}",
                ),
            )
        )
        .with_panel(
            graph(
                "HPU temperature per worker",
                "Hottest on-chip temperature of each worker's HPUs.",
                "celsius",
                query(
                    f"max by (pod_name) (habanalabs_temperature_onchip{{{HPU}}})",
                    "{{pod_name}}",
                ),
            )
        )
    )


def dashboards() -> dict[str, str]:
    """File name -> the JSON text committed in the chart."""
    out = {}
    for name, board in (
        ("gaudi-operator-health.json", operator_health()),
        ("gaudi-training-job.json", training_job()),
    ):
        data: Any = json.loads(json.dumps(board.build(), cls=JSONEncoder))
        # Grafana wants unique panel ids; the order of the panels gives stable ones.
        for i, panel in enumerate(data["panels"], start=1):
            panel["id"] = i
        out[name] = json.dumps(data, indent=2, sort_keys=True) + "\n"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if stale")
    args = parser.parse_args(argv)
    built = dashboards()
    stale = [
        name
        for name, text in built.items()
        if not (OUT / name).exists() or (OUT / name).read_text() != text
    ]
    extra = sorted({p.name for p in OUT.glob("*.json")} - built.keys()) if OUT.exists() else []
    if args.check:
        for name in [*stale, *extra]:
            print(f"stale: {OUT.relative_to(ROOT) / name} (run: python dashboards/build.py)")
        return 1 if stale or extra else 0
    OUT.mkdir(parents=True, exist_ok=True)
    for name in stale:
        (OUT / name).write_text(built[name])
        print(f"wrote {OUT.relative_to(ROOT) / name}")
    for name in extra:
        (OUT / name).unlink()
        print(f"removed {OUT.relative_to(ROOT) / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
