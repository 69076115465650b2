"""kopf wiring for failover: the node watch, vanished workers, and the stall clock.

Thin, like `handlers.py` (which imports this module): each handler updates what
`health.py` knows and wakes the jobs concerned; the decisions are made in the next
reconcile pass by `failover.step`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any

import kopf
from pydantic import ValidationError

from gaudi_operator import api, health, kube
from gaudi_operator.api import GaudiTrainingJobSpec, Phase

log = logging.getLogger(__name__)

CHILD_LABELS = {api.LABEL_MANAGED_BY: api.MANAGED_BY, api.LABEL_JOB_NAME: kopf.PRESENT}
STALL_POLL_SECONDS = float(os.environ.get("GAUDI3_STALL_POLL_SECONDS", "5"))


def _controller(memo: kopf.Memo) -> Any:
    return memo.get("controller")


def _jobs_on_node(controller: Any, node: str) -> list[tuple[str, str]]:
    return [
        key
        for key, pods in (controller.pods or {}).items()
        if any(getattr(p, "node", None) == node for p in pods)
    ]


@kopf.on.startup()
async def failover_startup(memo: kopf.Memo, **_: Any) -> None:
    cfg = memo.get("config")
    probes = health.PROBES
    probes.url = getattr(cfg, "prometheus_url", "") or os.environ.get("GAUDI3_PROMETHEUS_URL", "")
    # The health query is the operator's (cluster-wide hardware), not a job's.
    probes.hpu_health_query = os.environ.get(
        "GAUDI3_HPU_HEALTH_QUERY", health.DEFAULT_HPU_HEALTH_QUERY
    )
    probes.hpu_health_node_label = os.environ.get(
        "GAUDI3_HPU_HEALTH_NODE_LABEL", health.DEFAULT_HPU_HEALTH_NODE_LABEL
    )
    memo["stall_task"] = asyncio.create_task(_stall_loop(memo), name="gtj-stall-clock")


@kopf.on.cleanup()
async def failover_cleanup(memo: kopf.Memo, **_: Any) -> None:
    task = memo.get("stall_task")
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await health.PROBES.aclose()


@kopf.on.event("v1", "nodes")
def node_event(type: str | None, body: kopf.Body, name: str, memo: kopf.Memo, **_: Any) -> None:
    # Only a change of health matters (Ready, allocatable HPUs, gone); heartbeats do not.
    if not health.NODES.update(type, body):
        return
    controller = _controller(memo)
    if controller is None or controller.pods is None:
        return
    for key in _jobs_on_node(controller, name):
        controller.enqueue(key)


@kopf.on.event("v1", "pods", labels=CHILD_LABELS)
def worker_deleted(
    type: str | None,
    body: kopf.Body,
    namespace: str,
    labels: kopf.Labels,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    if type != "DELETED":
        return
    failure = health.DISRUPTIONS.pod_deleted(body)
    controller = _controller(memo)
    if failure is not None and controller is not None:
        log.info(
            "%s/%s: worker %s vanished: %s",
            namespace,
            labels[api.LABEL_JOB_NAME],
            failure.pod,
            failure.message,
        )
        controller.enqueue((namespace, labels[api.LABEL_JOB_NAME]))


# --- stall clock ------------------------------------------------------------------------


async def _stall_loop(memo: kopf.Memo) -> None:
    """One loop for all jobs (no kopf timer: that would put a finalizer on every job)."""
    while True:
        await asyncio.sleep(STALL_POLL_SECONDS)
        controller, clients = _controller(memo), memo.get("clients")
        if controller is None or clients is None or controller.jobs is None:
            continue
        for key, store in list(controller.jobs.items()):
            body = next(iter(store), None)
            if body is None:
                continue
            try:
                if await _check_progress(clients, body):
                    controller.enqueue(key)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # one job's trouble must not stop the clock for all
                log.warning("stall check of %s/%s failed: %s", *key, err)


async def _check_progress(clients: kube.Clients, body: dict[str, Any]) -> bool:
    """Read the job's step from Prometheus, record when it last advanced in
    status.progress; True when the job may be stalled (a pass should look)."""
    status = body.get("status") or {}
    if status.get("phase") != Phase.RUNNING.value:
        return False
    try:
        spec = GaudiTrainingJobSpec.model_validate(body.get("spec") or {})
    except ValidationError:
        return False
    timeout = spec.failure_policy.stall_timeout_seconds
    if timeout <= 0:
        return False
    meta = body.get("metadata") or {}
    name, namespace = meta.get("name", ""), meta.get("namespace", "")
    step = await health.PROBES.training_step(name, namespace, spec.autoscaling.prometheus_url)
    progress = status.get("progress") or {}
    prev_step = progress.get("step")
    prev_time = api.parse_rfc3339(progress.get("time"))
    now = health.utcnow()
    new_step, new_time = health.advance_progress(prev_step, prev_time, step, now)
    if new_step is not None and (new_step != prev_step or new_time != prev_time):
        patch = {
            "status": {"progress": {"step": int(new_step), "time": api.to_rfc3339(new_time or now)}}
        }
        await clients.custom.patch_namespaced_custom_object_status(
            api.GROUP,
            api.VERSION,
            namespace,
            api.PLURAL,
            name,
            patch,
            _content_type=kube.MERGE_PATCH,
        )
        return False
    if new_time is None:
        return False
    return (now - new_time).total_seconds() >= timeout
