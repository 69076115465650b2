"""The autoscaler's wiring: the jobs it may act on (kept from the one job event handler,
`gaudi_operator.handlers`), the loop's start and stop. Thin: the loop is
`loop.Autoscaler`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf

from gaudi_operator.autoscaling.loop import OUR_CONDITIONS, Autoscaler, AutoscalerSettings, Entry
from gaudi_operator.clients import kube
from gaudi_operator.clients.promql import DEFAULT_NAMESPACE_LABEL

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, job name)


def entry(spec: Mapping[str, Any], status: Mapping[str, Any]) -> Entry | None:
    """What the loop keeps of a job: only the jobs it acts on (autoscaling enabled, or one
    of its conditions still to clear), not every job in the cluster: it walks them every
    second."""
    enabled = bool((spec.get("autoscaling") or {}).get("enabled"))
    flagged = any(
        c.get("type") in OUR_CONDITIONS and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    return Entry(enabled=enabled, flagged=flagged) if enabled or flagged else None


def job_seen(
    memo: kopf.Memo,
    type: str | None,
    key: Key,
    spec: Mapping[str, Any],
    status: Mapping[str, Any],
) -> None:
    """Keep the loop's jobs (bound at start) current from the one job event handler."""
    jobs: dict[Key, tuple[Entry]] | None = memo.get("autoscaled_jobs")
    if jobs is None:
        return
    found = entry(spec, status) if type != "DELETED" else None
    if found is None:
        jobs.pop(key, None)
    else:
        jobs[key] = (found,)


async def start(memo: kopf.Memo) -> None:
    """Start the loop (called at start-up), bound to the jobs `job_seen` keeps."""
    # One line per Prometheus query at INFO would drown the operator's own log.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    cfg = memo.get("config")
    url = getattr(cfg, "prometheus_url", "") or ""
    kubeconfig = getattr(cfg, "kubeconfig", None)
    clients = await kube.connect(kubeconfig, pool_size=16)
    allowed = tuple(getattr(cfg, "prometheus_allowed_urls", ()) or ())
    label = getattr(cfg, "prometheus_namespace_label", DEFAULT_NAMESPACE_LABEL)
    settings = AutoscalerSettings.from_env(url, allowed, label)
    autoscaler = Autoscaler(clients, settings, gaudi=memo.get("gaudi"))
    jobs: dict[Key, tuple[Entry]] | None = memo.get("autoscaled_jobs")
    if jobs is None:
        jobs = memo["autoscaled_jobs"] = {}
    autoscaler.bind(jobs)
    autoscaler.start()
    memo["autoscaler"] = autoscaler
    log.info(
        "autoscaler: every %.0fs, default Prometheus %s",
        autoscaler.settings.interval,
        autoscaler.settings.prometheus_url or "(none)",
    )


async def stop(memo: kopf.Memo) -> None:
    autoscaler: Autoscaler | None = memo.get("autoscaler")
    if autoscaler is not None:
        await autoscaler.stop()
