"""kopf wiring for failover: the node watch, vanished workers, and the stall clock's life.

Thin: each handler updates what `signals` knows and wakes the jobs concerned; the
decisions are made in the next reconcile pass by `policy.step`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any

import kopf

from gaudi_operator import api
from gaudi_operator.clients.promql import DEFAULT_NAMESPACE_LABEL
from gaudi_operator.failover import signals
from gaudi_operator.failover.stall import (
    DEFAULT_STATUS_INTERVAL_SECONDS,
    StallClock,
    StallSettings,
    stall_loop,
)
from gaudi_operator.runtime.supervision import supervise

log = logging.getLogger(__name__)

CHILD_LABELS = {api.LABEL_MANAGED_BY: api.MANAGED_BY, api.LABEL_JOB_NAME: kopf.PRESENT}


def _controller(memo: kopf.Memo) -> Any:
    return memo.get("controller")


def _jobs_on_node(controller: Any, node: str) -> list[tuple[str, str]]:
    return [
        key
        for key, pods in (controller.pods or {}).items()
        if any(getattr(p, "node", None) == node for p in pods)
    ]


async def start(memo: kopf.Memo) -> None:
    """Configure the Prometheus probes and start the stall clock (called at start-up)."""
    cfg = memo.get("config")
    probes = signals.PROBES
    probes.url = getattr(cfg, "prometheus_url", "") or os.environ.get("GAUDI3_PROMETHEUS_URL", "")
    probes.allowed_urls = tuple(getattr(cfg, "prometheus_allowed_urls", ()) or ())
    # The health query is the operator's (cluster-wide hardware), not a job's.
    probes.hpu_health_query = os.environ.get(
        "GAUDI3_HPU_HEALTH_QUERY", signals.DEFAULT_HPU_HEALTH_QUERY
    )
    probes.hpu_health_node_label = os.environ.get(
        "GAUDI3_HPU_HEALTH_NODE_LABEL", signals.DEFAULT_HPU_HEALTH_NODE_LABEL
    )
    clock = StallClock(
        settings=StallSettings(
            namespace_label=getattr(cfg, "prometheus_namespace_label", DEFAULT_NAMESPACE_LABEL),
            status_interval=getattr(
                cfg, "progress_status_interval", DEFAULT_STATUS_INTERVAL_SECONDS
            ),
        )
    )
    memo["stall_task"] = supervise("stall-clock", lambda: stall_loop(memo, clock))


async def stop(memo: kopf.Memo) -> None:
    task = memo.get("stall_task")
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await signals.PROBES.aclose()


@kopf.on.event("v1", "nodes")
async def node_event(
    type: str | None, body: kopf.Body, name: str, memo: kopf.Memo, **_: Any
) -> None:
    # Only a change of health matters (Ready, allocatable HPUs, gone); heartbeats do not.
    if not signals.NODES.update(type, body):
        return
    controller = _controller(memo)
    if controller is None or controller.pods is None:
        return
    for key in _jobs_on_node(controller, name):
        controller.enqueue(key)


@kopf.on.event("v1", "pods", labels=CHILD_LABELS)
async def worker_deleted(
    type: str | None,
    body: kopf.Body,
    namespace: str,
    labels: kopf.Labels,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    if type != "DELETED":
        return
    failure = signals.DISRUPTIONS.pod_deleted(body)
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
