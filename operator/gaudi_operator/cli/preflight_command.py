"""`gaudi3 preflight`: check a cluster before the first GaudiTrainingJob (docs/gaudi.md).

One row per check (pass, warn, fail, skip), what was found and how to fix it; a table in a
terminal or a pod's log, JSON with `--output json`; exit code 1 when a check failed.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import Counter
from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated

import typer

from gaudi_operator import api
from gaudi_operator.jobs.gaudi import HUGEPAGES_MI_PER_HPU, NodeLabel
from gaudi_operator.preflight.checks import (
    CHECKS,
    DEVICE_PLUGIN_SELECTOR,
    Result,
    Settings,
    Status,
    exit_code,
)

STYLES = {
    Status.PASS: "bold green",
    Status.WARN: "bold yellow",
    Status.FAIL: "bold red",
    Status.SKIP: "dim",
}
# A pod's log has no terminal width: wide enough that the fixes stay readable.
LOG_WIDTH = 160


class Output(StrEnum):
    TABLE = "table"
    JSON = "json"


def summary(results: Sequence[Result]) -> str:
    counts = Counter(r.status for r in results)
    parts = [f"{counts[s]} {s.value}" for s in Status if counts[s]]
    verdict = "not ready" if exit_code(results) else "ready"
    return f"{verdict}: {', '.join(parts)}"


def render_table(results: Sequence[Result], width: int | None = None) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(width=width or (None if sys.stdout.isatty() else LOG_WIDTH))
    table = Table(title="gaudi3 preflight", show_lines=True, expand=True)
    table.add_column("check", min_width=max(len(title) for _, title in CHECKS))
    table.add_column("result", no_wrap=True)
    table.add_column("found", ratio=1, overflow="fold")  # a URL or a long name: folded
    fixes = any(r.fix for r in results)
    if fixes:  # all passed: no empty column
        table.add_column("fix", ratio=1, overflow="fold")
    for r in results:
        row = [r.title, Text(r.status.value, style=STYLES[r.status]), r.found]
        table.add_row(*row, *([r.fix] if fixes else []))
    console.print(table)
    console.print(summary(results))


def render_json(results: Sequence[Result]) -> None:
    body = {
        "ready": exit_code(results) == 0,
        "summary": summary(results),
        "checks": [r.as_dict() for r in results],
    }
    print(json.dumps(body, indent=2))


def run_preflight(
    namespace: Annotated[
        str, typer.Option("--namespace", "-n", help="Namespace the jobs will run in.")
    ] = "default",
    output: Annotated[Output, typer.Option("--output", "-o", help="table or json.")] = Output.TABLE,
    kubeconfig: Annotated[
        str | None,
        typer.Option(
            envvar="KUBECONFIG", help="Kubeconfig (default: in-cluster, then ~/.kube/config)."
        ),
    ] = None,
    lease_namespace: Annotated[
        str,
        typer.Option(help="Namespace of the operator's Lease (the chart's release namespace)."),
    ] = "gaudi-system",
    lease_name: Annotated[
        str,
        typer.Option(help="Name of the operator's Lease (the chart's release full name)."),
    ] = "gaudi-operator",
    device_plugin_selector: Annotated[
        str,
        typer.Option(
            help="Pod labels (key=value,...) of the device plugin's DaemonSet. Default: "
            "Intel's manifest (habana-k8s-device-plugin.yaml)."
        ),
    ] = DEVICE_PLUGIN_SELECTOR,
    prometheus_url: Annotated[
        str,
        typer.Option(
            envvar="GAUDI3_PROMETHEUS_URL",
            help="The Prometheus the operator queries (its --prometheus-url, the chart's "
            "prometheusURL).",
        ),
    ] = "",
    multi_node: Annotated[
        bool,
        typer.Option(
            "--multi-node/--single-node",
            help="Jobs will span nodes: check the scale-out readiness label.",
        ),
    ] = False,
    scale_out_label: Annotated[
        str,
        typer.Option(
            "--scale-out-label",
            help="The operator's --scale-out-label (key=value or key; empty: the gate is off).",
        ),
    ] = api.SCALE_OUT_READY_LABEL,
    hpus_per_worker: Annotated[
        int, typer.Option(help="HPUs per worker the jobs will ask for (1, 2, 4 or 8).")
    ] = 8,
    hugepages_mi_per_hpu: Annotated[
        int,
        typer.Option(
            "--hugepages-mi-per-hpu",
            min=0,
            help="The operator's --hugepages-mi-per-hpu: huge pages a worker requests per HPU.",
        ),
    ] = HUGEPAGES_MI_PER_HPU,
    queue: Annotated[
        str, typer.Option(help="A Kueue LocalQueue the jobs will name (spec.scheduling.queue).")
    ] = "",
    user: Annotated[
        str,
        typer.Option(
            help="Check this user's access (a SubjectAccessReview) instead of your own, e.g. "
            "system:serviceaccount:team-a:ci."
        ),
    ] = "",
    group: Annotated[
        list[str] | None, typer.Option("--group", help="A group of --user (repeatable).")
    ] = None,
    skip: Annotated[
        list[str] | None,
        typer.Option(
            "--skip", help=f"Skip a check (repeatable): {', '.join(c for c, _ in CHECKS)}."
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds for each request.")] = 10.0,
) -> None:
    """Check that the cluster is ready for GaudiTrainingJobs: CRD, operator, Gaudi nodes,
    device plugin, Prometheus, scale-out, huge pages, Pod Security, access, Kueue."""
    from gaudi_operator.preflight import probe

    if hpus_per_worker not in api.SUPPORTED_HPUS_PER_WORKER:
        raise typer.BadParameter("1, 2, 4 or 8", param_hint="--hpus-per-worker")
    known = {c for c, _ in CHECKS}
    unknown = sorted(set(skip or ()) - known)
    if unknown:
        raise typer.BadParameter(
            f"{', '.join(unknown)}: not a check ({', '.join(sorted(known))})", param_hint="--skip"
        )
    try:
        label = NodeLabel.parse(scale_out_label)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--scale-out-label") from err
    if kubeconfig and not os.path.exists(kubeconfig):
        raise typer.BadParameter(f"{kubeconfig}: no such file", param_hint="--kubeconfig")
    settings = Settings(
        namespace=namespace,
        lease_name=lease_name,
        lease_namespace=lease_namespace,
        device_plugin_selector=device_plugin_selector,
        prometheus_url=prometheus_url,
        multi_node=multi_node,
        scale_out_label=label,
        hpus_per_worker=hpus_per_worker,
        hugepages_mi_per_hpu=hugepages_mi_per_hpu,
        queue=queue,
        user=user,
        groups=tuple(group or ()),
        skip=frozenset(skip or ()),
    )
    results = asyncio.run(probe.run(settings, kubeconfig, request_timeout=timeout))
    if output == Output.JSON:
        render_json(results)
    else:
        render_table(results)
    raise typer.Exit(exit_code(results))
