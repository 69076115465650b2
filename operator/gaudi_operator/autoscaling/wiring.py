"""kopf wiring of the autoscaler: an index of the jobs it may act on, the loop's start and
stop, and binding the loop to that index. Thin: the loop is `loop.Autoscaler`."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from gaudi_operator import api
from gaudi_operator.autoscaling.loop import OUR_CONDITIONS, Autoscaler, AutoscalerSettings, Entry
from gaudi_operator.clients import kube
from gaudi_operator.clients.promql import DEFAULT_NAMESPACE_LABEL

log = logging.getLogger(__name__)


@kopf.index(api.GROUP, api.VERSION, api.PLURAL)
async def gtj_autoscaled(
    namespace: str, name: str, spec: kopf.Spec, status: kopf.Status, **_: Any
) -> dict[Any, Any]:
    enabled = bool((spec.get("autoscaling") or {}).get("enabled"))
    flagged = any(
        c.get("type") in OUR_CONDITIONS and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    if not (enabled or flagged):
        # Not kept: the loop walks this index every second, so it holds only the jobs
        # it acts on, not every job in the cluster (an empty result drops the entry).
        return {}
    return {(namespace, name): Entry(enabled=enabled, flagged=flagged)}


async def start(memo: kopf.Memo) -> None:
    """Start the loop (called at start-up); it binds to the index on the first job event."""
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


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)
async def bind_autoscaler(memo: kopf.Memo, gtj_autoscaled: kopf.Index[Any, Any], **_: Any) -> None:
    autoscaler: Autoscaler | None = memo.get("autoscaler")
    if autoscaler is not None and autoscaler.jobs is None:
        autoscaler.bind(gtj_autoscaled)
