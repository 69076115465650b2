"""kopf wiring, thin: indices of jobs and their children, events that wake the
controller, start-up and clean-up. Decisions live in `lifecycle`; effects in `reconciler`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import kopf

from gaudi_operator import api, kube, metrics
from gaudi_operator import autoscaler as _autoscaler  # noqa: F401  (registers its kopf handlers)
from gaudi_operator import failover_handlers as _failover  # noqa: F401  (node watch, stall clock)
from gaudi_operator.controller import Controller
from gaudi_operator.lifecycle import observe_pod
from gaudi_operator.reconciler import Reconciler

CHILD_LABELS = {api.LABEL_MANAGED_BY: api.MANAGED_BY, api.LABEL_JOB_NAME: kopf.PRESENT}


@dataclass
class OperatorConfig:
    """What `gaudi3 operator` passes in through kopf's memo."""

    kubeconfig: str | None = None
    metrics_port: int = 8000
    workers: int = 8
    pod_concurrency: int = 32
    resync_seconds: float = 30.0
    watch_timeout: int = 300
    prometheus_url: str = ""


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    cfg: OperatorConfig = memo.get("config") or OperatorConfig()
    # Watches: the server closes them before the client gives up; kopf reconnects.
    settings.watching.server_timeout = cfg.watch_timeout
    settings.watching.client_timeout = cfg.watch_timeout + 60
    settings.watching.connect_timeout = 30
    # Only our pods and services: at cluster scale, never stream every pod to the operator.
    selector = f"{api.LABEL_MANAGED_BY}={api.MANAGED_BY}"
    settings.watching.label_selectors["v1", "pods"] = selector
    settings.watching.label_selectors["v1", "services"] = selector
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 30
    # kopf's own per-object event queues; our passes run in the controller's pool.
    settings.queueing.worker_limit = 200
    settings.posting.level = logging.WARNING
    # Nothing here uses kopf's progress or diff-base; keep them off status if ever used.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=api.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=api.GROUP, key="last-handled-configuration"
    )
    clients = await kube.connect(cfg.kubeconfig, pool_size=cfg.pod_concurrency * 2)
    reconciler = Reconciler(clients, pod_concurrency=cfg.pod_concurrency)
    controller = Controller(reconciler, workers=cfg.workers, resync_seconds=cfg.resync_seconds)
    controller.start()
    memo["clients"] = clients
    memo["controller"] = controller
    metrics.serve(cfg.metrics_port)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    controller: Controller | None = memo.get("controller")
    if controller is not None:
        await controller.stop()
    clients: kube.Clients | None = memo.get("clients")
    if clients is not None:
        await clients.close()


@kopf.on.probe(id="workqueue")
def workqueue_depth(memo: kopf.Memo, **_: Any) -> int:
    controller: Controller | None = memo.get("controller")
    return len(controller.queue) if controller else 0


# --- indices ------------------------------------------------------------------------------


@kopf.index(api.GROUP, api.VERSION, api.PLURAL)
def gtj_jobs(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, name): kopf_body_copy(body)}


@kopf.index("v1", "pods", labels=CHILD_LABELS)
def gtj_pods(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, labels[api.LABEL_JOB_NAME]): observe_pod(body)}


@kopf.index("v1", "services", labels=CHILD_LABELS)
def gtj_services(namespace: str, labels: kopf.Labels, name: str, **_: Any) -> dict[Any, Any]:
    return {(namespace, labels[api.LABEL_JOB_NAME]): name}


def kopf_body_copy(body: kopf.Body) -> dict[str, Any]:
    import copy

    return copy.deepcopy(dict(body))


# --- wake-ups -----------------------------------------------------------------------------


def _wake(memo: kopf.Memo, key: tuple[str, str], indices: dict[str, Any]) -> None:
    controller: Controller | None = memo.get("controller")
    if controller is None:
        return
    if controller.jobs is None:
        controller.bind(indices["gtj_jobs"], indices["gtj_pods"], indices["gtj_services"])
    controller.enqueue(key)


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)
def job_event(type: str | None, namespace: str, name: str, memo: kopf.Memo, **kwargs: Any) -> None:
    if type == "DELETED":
        controller: Controller | None = memo.get("controller")
        if controller is not None:
            controller.forget((namespace, name))
        return
    _wake(memo, (namespace, name), kwargs)


@kopf.on.event("v1", "pods", labels=CHILD_LABELS)
def pod_event(namespace: str, labels: kopf.Labels, memo: kopf.Memo, **kwargs: Any) -> None:
    _wake(memo, (namespace, labels[api.LABEL_JOB_NAME]), kwargs)


@kopf.on.event("v1", "services", labels=CHILD_LABELS)
def service_event(namespace: str, labels: kopf.Labels, memo: kopf.Memo, **kwargs: Any) -> None:
    _wake(memo, (namespace, labels[api.LABEL_JOB_NAME]), kwargs)
