"""`gaudi3 operator`: run the GaudiTrainingJob operator against the current kubeconfig."""

from __future__ import annotations

import asyncio
import os
from enum import StrEnum
from typing import Annotated

import typer


class LogFormat(StrEnum):
    PLAIN = "plain"
    JSON = "json"


def run_operator(
    namespace: Annotated[
        list[str] | None,
        typer.Option(
            "--namespace",
            "-n",
            help="Namespace to serve (repeatable; globs allowed). Default: all.",
        ),
    ] = None,
    metrics_port: Annotated[
        int, typer.Option(help="Port of the Prometheus /metrics endpoint (0: off).")
    ] = 8000,
    health_port: Annotated[
        int, typer.Option(help="Port of the liveness endpoint /healthz (0: off).")
    ] = 8080,
    log_format: Annotated[LogFormat, typer.Option(help="Log format.")] = LogFormat.PLAIN,
    standalone: Annotated[
        bool,
        typer.Option(
            "--standalone/--peering",
            help="Standalone (default) or coordinate with other replicas through kopf peering.",
        ),
    ] = True,
    workers: Annotated[int, typer.Option(help="Jobs reconciled at the same time.")] = 8,
    pod_concurrency: Annotated[
        int, typer.Option(help="Pod create/delete requests in flight, for all jobs together.")
    ] = 32,
    resync_seconds: Annotated[
        float, typer.Option(help="Every job is reconciled at least this often.")
    ] = 30.0,
    kubeconfig: Annotated[
        str | None,
        typer.Option(
            envvar="KUBECONFIG", help="Kubeconfig file (default: in-cluster, then ~/.kube/config)."
        ),
    ] = None,
    prometheus_url: Annotated[
        str,
        typer.Option(
            envvar="GAUDI3_PROMETHEUS_URL",
            help="Default Prometheus for autoscaling and stall detection.",
        ),
    ] = "",
    prometheus_allowed_url: Annotated[
        list[str] | None,
        typer.Option(
            "--prometheus-allowed-url",
            envvar="GAUDI3_PROMETHEUS_ALLOWED_URLS",
            help="Another Prometheus a job's spec.autoscaling.prometheusURL may name "
            "(repeatable; the variable takes a space-separated list). Any other URL there "
            "is refused: job authors must not make the operator send requests wherever it "
            "can reach.",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logs.")] = False,
) -> None:
    """Run the operator (Ctrl-C or SIGTERM stops it)."""
    import kopf

    # Registers every handler in kopf's default registry.
    from gaudi_operator import app  # noqa: F401
    from gaudi_operator.runtime.config import OperatorConfig

    if kubeconfig:
        # kopf's own client reads this too, so both talk to the same cluster.
        os.environ["KUBECONFIG"] = kubeconfig
    kopf.configure(
        verbose=verbose,
        log_format=kopf.LogFormat.JSON if log_format == LogFormat.JSON else kopf.LogFormat.FULL,
    )
    config = OperatorConfig(
        kubeconfig=kubeconfig,
        metrics_port=metrics_port,
        workers=workers,
        pod_concurrency=pod_concurrency,
        resync_seconds=resync_seconds,
        prometheus_url=prometheus_url,
        prometheus_allowed_urls=tuple(prometheus_allowed_url or ()),
    )
    namespaces = list(namespace or [])
    asyncio.run(
        kopf.operator(
            standalone=standalone,
            clusterwide=not namespaces,
            namespaces=namespaces,
            liveness_endpoint=f"http://0.0.0.0:{health_port}/healthz" if health_port else None,
            memo=kopf.Memo(config=config),
        )
    )
