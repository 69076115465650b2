"""kopf wiring of the job plan, thin: indices of jobs and their children, and the events
that wake the controller. Decisions live in `plan`; effects in `reconciler`.

Every handler is `async`: kopf runs a plain `def` in a thread pool, and these touch the
work queue and caches that the event loop owns (see tests/unit/test_handlers_async.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from gaudi_operator import api
from gaudi_operator.jobs.gaudi import ScaleOutNodes
from gaudi_operator.jobs.observation import observe_pod
from gaudi_operator.jobs.observation import unplaced as pod_unplaced
from gaudi_operator.runtime.controller import Controller

CHILD_LABELS = {api.LABEL_MANAGED_BY: api.MANAGED_BY, api.LABEL_JOB_NAME: kopf.PRESENT}


@kopf.on.probe(id="workqueue")
async def workqueue_depth(memo: kopf.Memo, **_: Any) -> int:
    controller: Controller | None = memo.get("controller")
    return len(controller.queue) if controller else 0


# --- indices ------------------------------------------------------------------------------


@kopf.index(api.GROUP, api.VERSION, api.PLURAL)
async def gtj_jobs(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, name): index_body(body)}


def index_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the passes read of a job: metadata, spec, status. Not a deep copy (once per
    event, it was the largest cost of this handler): every watch event is a freshly
    decoded object that nothing changes afterwards, and the passes only read it.
    managedFields is often the largest part of an object and no pass reads it."""
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if k != "managedFields"}
    job = {k: body[k] for k in ("apiVersion", "kind", "spec", "status") if k in body}
    job["metadata"] = meta
    return job


@kopf.index("v1", "pods", labels=CHILD_LABELS)
async def gtj_pods(
    namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Any, Any]:
    return {(namespace, labels[api.LABEL_JOB_NAME]): observe_pod(body)}


@kopf.index("v1", "services", labels=CHILD_LABELS)
async def gtj_services(namespace: str, labels: kopf.Labels, name: str, **_: Any) -> dict[Any, Any]:
    return {(namespace, labels[api.LABEL_JOB_NAME]): name}


# --- wake-ups -----------------------------------------------------------------------------


def _wake(memo: kopf.Memo, key: tuple[str, str], indices: dict[str, Any]) -> None:
    controller: Controller | None = memo.get("controller")
    if controller is None:
        return
    if controller.jobs is None:
        controller.bind(indices["gtj_jobs"], indices["gtj_pods"], indices["gtj_services"])
    controller.enqueue(key)


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)
async def job_event(
    type: str | None, namespace: str, name: str, memo: kopf.Memo, **kwargs: Any
) -> None:
    if type == "DELETED":
        controller: Controller | None = memo.get("controller")
        if controller is not None:
            controller.forget((namespace, name))
        return
    _wake(memo, (namespace, name), kwargs)


@kopf.on.event("v1", "pods", labels=CHILD_LABELS)
async def pod_event(
    type: str | None,
    namespace: str,
    name: str,
    uid: str,
    labels: kopf.Labels,
    meta: kopf.Meta,
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    key = (namespace, labels[api.LABEL_JOB_NAME])
    controller: Controller | None = memo.get("controller")
    if controller is not None:
        # kopf updated the pod index before this handler: what the event shows, a pass
        # now sees (the expectations of the job's last pass).
        going = type == "DELETED" or bool(meta.get("deletionTimestamp"))
        body = kwargs.get("body") or {}
        controller.observe_pod(
            key,
            name,
            uid,
            going,
            node=(body.get("spec") or {}).get("nodeName"),
            unplaced=pod_unplaced(body),
            gone=type == "DELETED",
            index=_index(labels.get(api.LABEL_WORKER_INDEX)),
        )
    _wake(memo, key, kwargs)


def _index(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


@kopf.on.event("v1", "services", labels=CHILD_LABELS)
async def service_event(
    namespace: str, labels: kopf.Labels, memo: kopf.Memo, **kwargs: Any
) -> None:
    _wake(memo, (namespace, labels[api.LABEL_JOB_NAME]), kwargs)


@kopf.on.event("v1", "nodes")
async def scale_out_node_event(
    type: str | None, name: str, labels: kopf.Labels, memo: kopf.Memo, **_: Any
) -> None:
    """Keep the scale-out ready nodes (jobs.gaudi) current. When the cluster goes from none
    to some or back, jobs whose workers wait for a node are looked at again: their
    Scheduled condition says whether the gate is what holds them."""
    nodes: ScaleOutNodes | None = memo.get("scale_out_nodes")
    if nodes is None or not nodes.update(type, name, labels):
        return
    controller: Controller | None = memo.get("controller")
    if controller is None:
        return
    for key in controller.places.jobs_waiting():
        controller.enqueue(key)
