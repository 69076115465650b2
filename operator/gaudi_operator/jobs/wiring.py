"""What the job plan needs from the watches, thin: the job index's view of a job, and the
events that wake the controller. Called by the one handler per resource
(`gaudi_operator.handlers`); decisions live in `plan`, effects in `reconciler`.

Nothing here awaits: these touch the work queue and caches that the event loop owns.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from gaudi_operator import api
from gaudi_operator.jobs.gaudi import ScaleOutNodes
from gaudi_operator.jobs.observation import unplaced as pod_unplaced
from gaudi_operator.runtime import packed
from gaudi_operator.runtime.controller import Controller

Key = tuple[str, str]  # (namespace, job name)


@kopf.on.probe(id="workqueue")
async def workqueue_depth(memo: kopf.Memo, **_: Any) -> int:
    controller: Controller | None = memo.get("controller")
    return len(controller.queue) if controller else 0


def index_body(body: Mapping[str, Any]) -> packed.Packed:
    """What the passes read of a job: metadata, spec, status, packed as compact JSON
    (`runtime.packed`: a quarter of the memory of the decoded job, which the index holds
    for every job). managedFields is often the largest part of an object and no pass
    reads it."""
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if k != "managedFields"}
    job = {k: body[k] for k in ("apiVersion", "kind", "spec", "status") if k in body}
    job["metadata"] = meta
    return packed.pack(job)


def wake(
    memo: kopf.Memo,
    key: Key,
    jobs: Mapping[Key, Any],
    pods: Mapping[Key, Any],
    services: Mapping[Key, Any],
) -> None:
    controller: Controller | None = memo.get("controller")
    if controller is None:
        return
    if controller.jobs is None:
        controller.bind(jobs, pods, services)
    controller.enqueue(key)


def job_seen(
    memo: kopf.Memo,
    type: str | None,
    key: Key,
    jobs: Mapping[Key, Any],
    pods: Mapping[Key, Any],
    services: Mapping[Key, Any],
) -> None:
    controller: Controller | None = memo.get("controller")
    if type == "DELETED":
        if controller is not None:
            controller.forget(key)
        return
    wake(memo, key, jobs, pods, services)
    if controller is not None:
        controller.observe_job(key)  # after bind: wake binds the indices on first use


def pod_seen(
    memo: kopf.Memo,
    type: str | None,
    key: Key,
    name: str,
    uid: str,
    labels: Mapping[str, str],
    meta: Mapping[str, Any],
    body: Mapping[str, Any],
    jobs: Mapping[Key, Any],
    pods: Mapping[Key, Any],
    services: Mapping[Key, Any],
) -> None:
    controller: Controller | None = memo.get("controller")
    if controller is not None:
        # kopf updated the pod index before this handler: what the event shows, a pass
        # now sees (the expectations of the job's last pass).
        going = type == "DELETED" or bool(meta.get("deletionTimestamp"))
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
    wake(memo, key, jobs, pods, services)


def _index(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


def node_seen(memo: kopf.Memo, type: str | None, name: str, labels: Mapping[str, str]) -> None:
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
