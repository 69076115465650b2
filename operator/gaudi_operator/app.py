"""The operator process: kopf start-up that builds the shared clients and starts every
behaviour, in order. Importing this module registers all kopf handlers (each behaviour's
`wiring` module); `gaudi3 operator` imports it and runs kopf.
"""

from __future__ import annotations

from typing import Any

import kopf

from gaudi_operator.autoscaling import wiring as autoscaling_wiring
from gaudi_operator.clients import kopf_session, kube
from gaudi_operator.failover import wiring as failover_wiring
from gaudi_operator.jobs import wiring as jobs_wiring  # noqa: F401  (registers its handlers)
from gaudi_operator.jobs.gaudi import GaudiSettings, NodeLabel, ScaleOutNodes
from gaudi_operator.jobs.reconciler import Reconciler
from gaudi_operator.observability import metrics
from gaudi_operator.queueing import wiring as queueing_wiring
from gaudi_operator.runtime import settings as kopf_settings
from gaudi_operator.runtime import supervision
from gaudi_operator.runtime.config import OperatorConfig
from gaudi_operator.runtime.controller import Controller

# /healthz turns red while a background loop keeps failing (runtime/supervision.py).
kopf.on.probe(id="loops")(supervision.probe)
# kopf's requests go through the leader's write fence and name this replica.
kopf.on.login(id="fenced-session")(kopf_session.login)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    cfg: OperatorConfig = memo.get("config") or OperatorConfig()
    kopf_settings.apply(settings, cfg)
    # Intel's pod contract, operator-wide: every manifest of a worker pod is built with it.
    gaudi = GaudiSettings(cfg.hugepages_mi_per_hpu, NodeLabel.parse(cfg.scale_out_label))
    memo["gaudi"] = gaudi
    memo["scale_out_nodes"] = scale_out_nodes = ScaleOutNodes(gaudi.scale_out_label)
    await autoscaling_wiring.start(memo)
    await failover_wiring.start(memo)
    clients = await kube.connect(cfg.kubeconfig, pool_size=cfg.pod_concurrency * 2)
    reconciler = Reconciler(
        clients, pod_concurrency=cfg.pod_concurrency, gaudi=gaudi, scale_out_nodes=scale_out_nodes
    )
    controller = Controller(reconciler, workers=cfg.workers, resync_seconds=cfg.resync_seconds)
    controller.start()
    await queueing_wiring.start(memo, clients, cfg.resync_seconds, gaudi)
    memo["clients"] = clients
    memo["controller"] = controller
    metrics.serve(cfg.metrics_port, cfg.metrics_address)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    await autoscaling_wiring.stop(memo)
    await failover_wiring.stop(memo)
    await queueing_wiring.stop(memo)
    controller: Controller | None = memo.get("controller")
    if controller is not None:
        await controller.stop()
    clients: kube.Clients | None = memo.get("clients")
    if clients is not None:
        await clients.close()
