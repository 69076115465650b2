"""`gaudi3 operator`: run the GaudiTrainingJob operator against the current kubeconfig."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import uuid
from collections.abc import Coroutine
from enum import StrEnum
from typing import Annotated, Any

import typer

# status.progress at most once a minute besides transitions; at rest a job may cost 0.2
# writes a minute (docs/performance.md), which the default (600 s) keeps well below.
MIN_PROGRESS_STATUS_INTERVAL = 60
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


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
    health_address: Annotated[
        str,
        typer.Option(help="Address /healthz listens on (0.0.0.0: every interface, for kubelet)."),
    ] = "0.0.0.0",
    metrics_address: Annotated[
        str,
        typer.Option(
            help="Address /metrics listens on (0.0.0.0: every interface, for a scraper in "
            "the cluster; 127.0.0.1 on a workstation)."
        ),
    ] = "0.0.0.0",
    leader_elect: Annotated[
        bool,
        typer.Option(
            "--leader-elect/--no-leader-elect",
            help="Run kopf's handlers only while holding the leader Lease (replicas wait as "
            "standbys). Off: this process acts at once; never run two that way.",
        ),
    ] = True,
    leader_election_namespace: Annotated[
        str | None,
        typer.Option(help="Namespace of the Lease (default: the pod's own, else default)."),
    ] = None,
    leader_election_id: Annotated[
        str, typer.Option(help="Name of the Lease; replicas with the same name share one leader.")
    ] = "gaudi-operator",
    leader_election_identity: Annotated[
        str | None,
        typer.Option(
            help="This replica's name in the Lease, before a random suffix (default: the host "
            "name, which under hostNetwork is the node's, not the pod's)."
        ),
    ] = None,
    lease_duration: Annotated[
        int,
        typer.Option(help="Seconds a standby waits after the leader's last renewal to take over."),
    ] = 15,
    renew_deadline: Annotated[
        float,
        typer.Option(
            help="Seconds after its last renewal at which a leader that could not renew "
            "stops acting and exits; renew deadline + 2 x retry period must be below the "
            "lease duration."
        ),
    ] = 10.0,
    retry_period: Annotated[
        float, typer.Option(help="Seconds between two attempts to acquire or renew the Lease.")
    ] = 2.0,
    leader_election_server: Annotated[
        str | None,
        typer.Option(
            envvar="GAUDI3_LEADER_ELECTION_SERVER",
            help="Test/ops hook: the election's client dials this URL (the same API server "
            "behind a proxy) instead of the kubeconfig's; the server's certificate is still "
            "checked against the kubeconfig's name.",
        ),
    ] = None,
    workers: Annotated[int, typer.Option(help="Jobs reconciled at the same time.")] = 32,
    pod_concurrency: Annotated[
        int, typer.Option(help="Pod create/delete requests in flight, for all jobs together.")
    ] = 32,
    resync_seconds: Annotated[
        float, typer.Option(help="Every job is reconciled at least this often.")
    ] = 30.0,
    status_debounce_seconds: Annotated[
        float,
        typer.Option(
            min=0,
            help="Workers' progress on the way to Running (counts, Scheduled, Starting) is "
            "written this late at most, or with the next other change (workers that cannot "
            "be placed: 5 s at most); 0 writes every step.",
        ),
    ] = 300.0,
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
    prometheus_namespace_label: Annotated[
        str,
        typer.Option(
            envvar="GAUDI3_PROMETHEUS_NAMESPACE_LABEL",
            help="The label your Prometheus puts a pod's namespace in (from service "
            "discovery, honor_labels false, so a pod cannot set it). Every selector of a "
            "job's PromQL gets <label>=\"<the job's namespace>\" and a query that names the "
            "label otherwise is refused. Empty: queries are not limited (single-tenant "
            "clusters only).",
        ),
    ] = "namespace",
    progress_status_interval: Annotated[
        float,
        typer.Option(
            envvar="GAUDI3_PROGRESS_STATUS_INTERVAL",
            help="Seconds between two status.progress records of a training job besides "
            "its transitions (first step, stalled, moving again); 0: transitions only, at "
            "least 60 otherwise. The step itself is in the operator's metrics.",
        ),
    ] = 600.0,
    hugepages_mi_per_hpu: Annotated[
        int,
        typer.Option(
            "--hugepages-mi-per-hpu",
            min=0,
            help="hugepages-2Mi (MiB, even) each worker requests per HPU unless its "
            "spec.resources says otherwise; 0 requests none. Default: Intel's sizing "
            "(docs/gaudi.md).",
        ),
    ] = 3624,
    scale_out_label: Annotated[
        str,
        typer.Option(
            "--scale-out-label",
            help="Node label (key=value, or key for any value) that marks a node whose "
            "Gaudi scale-out NICs are configured; workers of jobs that can have more than "
            "one worker run only on such nodes. Empty turns the gate off. Default: the "
            "label Intel's network operator sets.",
        ),
    ] = "intel.feature.node.kubernetes.io/gaudi-scale-out=true",
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logs.")] = False,
) -> None:
    """Run the operator (Ctrl-C or SIGTERM stops it)."""
    if 0 < progress_status_interval < MIN_PROGRESS_STATUS_INTERVAL:
        raise typer.BadParameter(
            f"{progress_status_interval:g}: 0 (transitions only) or at least "
            f"{MIN_PROGRESS_STATUS_INTERVAL} seconds, so that training jobs stay quiet at rest",
            param_hint="--progress-status-interval",
        )
    if prometheus_namespace_label and not LABEL_NAME.match(prometheus_namespace_label):
        raise typer.BadParameter(
            f"{prometheus_namespace_label!r} is not a Prometheus label name",
            param_hint="--prometheus-namespace-label",
        )
    import kopf

    from gaudi_operator.jobs.gaudi import NodeLabel

    try:
        NodeLabel.parse(scale_out_label)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--scale-out-label") from err
    if hugepages_mi_per_hpu % 2:
        raise typer.BadParameter(
            f"{hugepages_mi_per_hpu}: whole 2 MiB pages only (an even number of MiB)",
            param_hint="--hugepages-mi-per-hpu",
        )
    # Registers every handler in kopf's default registry.
    from gaudi_operator import app  # noqa: F401
    from gaudi_operator.observability import metrics
    from gaudi_operator.runtime.config import OperatorConfig
    from gaudi_operator.runtime.settings import SharedMemo

    if kubeconfig:
        # kopf's own client reads this too, so both talk to the same cluster.
        os.environ["KUBECONFIG"] = kubeconfig
    kopf.configure(
        verbose=verbose,
        log_format=kopf.LogFormat.JSON if log_format == LogFormat.JSON else kopf.LogFormat.FULL,
    )
    if not verbose:
        # kopf logs "Handler ... succeeded." for every handler on every watch event: several
        # lines per pod change, a measurable share of the CPU at a thousand jobs.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    config = OperatorConfig(
        kubeconfig=kubeconfig,
        metrics_port=metrics_port,
        metrics_address=metrics_address,
        workers=workers,
        pod_concurrency=pod_concurrency,
        resync_seconds=resync_seconds,
        status_debounce_seconds=status_debounce_seconds,
        prometheus_url=prometheus_url,
        prometheus_allowed_urls=tuple(prometheus_allowed_url or ()),
        prometheus_namespace_label=prometheus_namespace_label,
        progress_status_interval=progress_status_interval,
        hugepages_mi_per_hpu=hugepages_mi_per_hpu,
        scale_out_label=scale_out_label,
    )
    if not prometheus_namespace_label:
        logging.getLogger(__name__).warning(
            "--prometheus-namespace-label is empty: jobs' PromQL queries are NOT limited to "
            "their namespaces (any job can read any namespace's series)"
        )
    namespaces = list(namespace or [])
    health = f"http://{health_address}:{health_port}/healthz" if health_port else None

    def operator(stop: asyncio.Event | None = None) -> Coroutine[Any, Any, None]:
        # Standalone: the Lease, not kopf's peering, decides which replica acts.
        return kopf.operator(
            standalone=True,
            clusterwide=not namespaces,
            namespaces=namespaces,
            liveness_endpoint=health,
            memo=SharedMemo(config=config),
            stop_flag=stop,
        )

    from gaudi_operator.runtime.leader import LeaderElectionSettings, run_as_leader

    election = LeaderElectionSettings(
        name=leader_election_id,
        lease_duration=lease_duration,
        renew_deadline=renew_deadline,
        retry_period=retry_period,
        server=leader_election_server,
    )
    if leader_election_namespace:
        election.namespace = leader_election_namespace
    if leader_election_identity:
        # The suffix keeps a restarted container apart from its predecessor.
        election.identity = f"{leader_election_identity}_{uuid.uuid4().hex[:8]}"
    if leader_elect:
        try:
            election.validate()
        except ValueError as err:
            hint = "--lease-duration/--renew-deadline/--retry-period"
            raise typer.BadParameter(str(err), param_hint=hint) from err
    # Every client names this replica in its User-Agent (the API server's audit log).
    from gaudi_operator.clients import kube

    kube.set_identity(election.identity)
    # Served before the campaign: a standby is a healthy scrape target (gaudi_operator_leader 0).
    metrics.serve(metrics_port, metrics_address)
    if not leader_elect:
        metrics.LEADER.set(1)
        asyncio.run(operator())
        return
    code = asyncio.run(
        run_as_leader(
            operator,
            election,
            kubeconfig=kubeconfig,
            health_host=health_address,
            health_port=health_port,
        )
    )
    raise typer.Exit(code)
