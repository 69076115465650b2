"""The operator process: kopf start-up that builds the shared clients and starts every
behaviour, in order. Importing this module registers all kopf handlers (one index and one
event handler per resource in `handlers`, which feed each behaviour's `wiring`);
`gaudi3 operator` imports it and runs kopf.
"""

from __future__ import annotations

from typing import Any

import kopf

from gaudi_operator import handlers  # noqa: F401  (registers the resource handlers)
from gaudi_operator.autoscaling import wiring as autoscaling_wiring
from gaudi_operator.clients import kopf_session, kube
from gaudi_operator.failover import wiring as failover_wiring
from gaudi_operator.jobs import wiring as jobs_wiring  # noqa: F401  (the workqueue probe)
from gaudi_operator.jobs.gaudi import GaudiSettings, NodeLabel, ScaleOutNodes
from gaudi_operator.jobs.reconciler import Reconciler
from gaudi_operator.observability import metrics
from gaudi_operator.queueing import wiring as queueing_wiring
from gaudi_operator.runtime import settings as kopf_settings
from gaudi_operator.runtime import supervision
from gaudi_operator.runtime.config import OperatorConfig
from gaudi_operator.runtime.controller import Controller
from gaudi_operator.runtime.expectations import Expectations

# /healthz turns red while a background loop keeps failing (runtime/supervision.py).
kopf.on.probe(id="loops")(supervision.probe)
# kopf's requests go through the leader's write fence and name this replica.
kopf.on.login(id="fenced-session")(kopf_session.login)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Idempotent: kopf retries a start-up handler that raised, and what an earlier try
    started (kept in the memo) must not start twice. Each step is skipped when done."""
    cfg: OperatorConfig = memo.get("config") or OperatorConfig()
    kopf_settings.apply(settings, cfg)
    # Intel's pod contract, operator-wide: every manifest of a worker pod is built with it.
    gaudi = GaudiSettings(cfg.hugepages_mi_per_hpu, NodeLabel.parse(cfg.scale_out_label))
    memo["gaudi"] = gaudi
    if memo.get("scale_out_nodes") is None:
        memo["scale_out_nodes"] = ScaleOutNodes(gaudi.scale_out_label)
    scale_out_nodes = memo["scale_out_nodes"]
    if memo.get("autoscaler") is None:
        await autoscaling_wiring.start(memo)
    if memo.get("stall_task") is None:
        await failover_wiring.start(memo)
    if memo.get("clients") is None:
        memo["clients"] = await kube.connect(cfg.kubeconfig, pool_size=cfg.pod_concurrency * 2)
    clients: kube.Clients = memo["clients"]
    if memo.get("controller") is None:
        expectations = Expectations()
        reconciler = Reconciler(
            clients,
            pod_concurrency=cfg.pod_concurrency,
            gaudi=gaudi,
            scale_out_nodes=scale_out_nodes,
            expectations=expectations,
            status_debounce_seconds=cfg.status_debounce_seconds,
        )
        controller = Controller(
            reconciler,
            workers=cfg.workers,
            resync_seconds=cfg.resync_seconds,
            expectations=expectations,
        )
        # A launcher's report (restartInPlace) wakes its job like a pod event does.
        reconciler.launchers.wake = controller.enqueue
        controller.start()
        memo["controller"] = controller
    if memo.get("queueing") is None:
        await queueing_wiring.start(memo, clients, cfg.resync_seconds, gaudi)
    metrics.serve(cfg.metrics_port, cfg.metrics_address)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    await autoscaling_wiring.stop(memo)
    await failover_wiring.stop(memo)
    await queueing_wiring.stop(memo)
    controller: Controller | None = memo.get("controller")
    if controller is not None:
        await controller.stop()
        launchers = getattr(controller.reconciler, "launchers", None)
        if launchers is not None:
            await launchers.aclose()
    clients: kube.Clients | None = memo.get("clients")
    if clients is not None:
        await clients.close()
