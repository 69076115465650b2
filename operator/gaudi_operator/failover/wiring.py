"""Failover's wiring: the node watch, vanished workers, and the stall clock's life.

Thin: each function (called by the one handler per resource, `gaudi_operator.handlers`)
updates what `signals` knows and wakes the jobs concerned; the decisions are made in the
next reconcile pass by `policy.step`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import kopf

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


def _controller(memo: kopf.Memo) -> Any:
    return memo.get("controller")


async def start(memo: kopf.Memo) -> None:
    """Configure the Prometheus probes and start the stall clock (called at start-up)."""
    cfg = memo.get("config")
    probes = signals.PROBES
    probes.url = getattr(cfg, "prometheus_url", "") or os.environ.get("GAUDI3_PROMETHEUS_URL", "")
    probes.allowed_urls = tuple(getattr(cfg, "prometheus_allowed_urls", ()) or ())
    # The health query is the operator's (cluster-wide hardware), not a job's. An empty
    # query turns it off; an unset one is Intel's exporter's default (docs/gaudi.md).
    probes.hpu_health_query = os.environ.get(
        signals.HPU_HEALTH_QUERY_ENV, signals.DEFAULT_HPU_HEALTH_QUERY
    )
    probes.hpu_health_interval = float(
        os.environ.get(signals.HPU_HEALTH_INTERVAL_ENV, signals.DEFAULT_HPU_HEALTH_INTERVAL)
    )
    probes.hpu_pod_grace = float(
        os.environ.get(signals.HPU_HEALTH_POD_GRACE_ENV, signals.DEFAULT_HPU_HEALTH_POD_GRACE)
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
    memo["hpu_health_task"] = supervise("hpu-health", lambda: hpu_health_loop(memo))


async def stop(memo: kopf.Memo) -> None:
    for name in ("stall_task", "hpu_health_task"):
        task = memo.get(name)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    await signals.PROBES.aclose()


def node_seen(memo: kopf.Memo, type: str | None, name: str, body: Mapping[str, Any]) -> None:
    # Only a change of health matters (Ready, allocatable HPUs, gone); heartbeats do not.
    if not signals.NODES.update(type, body):
        return
    controller = _controller(memo)
    if controller is None:
        return
    for key in controller.places.jobs_on_node(name):
        controller.enqueue(key)


def pod_seen(
    memo: kopf.Memo, type: str | None, key: tuple[str, str], body: Mapping[str, Any]
) -> None:
    """A worker deleted by someone else (an eviction, `kubectl delete`): recorded as a
    disruption for its job's next pass."""
    if type != "DELETED":
        return
    failure = signals.DISRUPTIONS.pod_deleted(body)
    controller = _controller(memo)
    if failure is not None and controller is not None:
        log.info("%s/%s: worker %s vanished: %s", *key, failure.pod, failure.message)
        controller.enqueue(key)


async def hpu_health_loop(memo: kopf.Memo) -> None:
    """Read the HPU health query every interval and wake the jobs whose workers hold a card
    with a fault the previous reading did not have: a fault is acted on within an
    interval, not at the next resync (the pass decides; passes reuse the reading)."""
    probes = signals.PROBES
    seen: frozenset[tuple[str, str, Any]] = frozenset()
    while True:
        await asyncio.sleep(probes.hpu_health_interval)
        # Read even without workers: gaudi_operator_hpu_faults stays current.
        faults, _ = await probes.hpu_faults()
        controller = _controller(memo)
        if controller is None:
            continue
        wake, seen = jobs_with_new_faults(controller.places.job_of, faults, seen)
        for key in wake:
            controller.enqueue(key)


def jobs_with_new_faults(
    job_of: Callable[[str, str], tuple[str, str] | None],
    faults: signals.HpuFaults,
    seen: frozenset[tuple[str, str, Any]],
) -> tuple[list[tuple[str, str]], frozenset[tuple[str, str, Any]]]:
    """The jobs (namespace, name) with a worker whose faults include one not in `seen`,
    and the faults to remember for the next reading. `job_of` names a worker pod's job
    (`PodPlaces.job_of`): the cost is the new faults', not the jobs'."""
    now = frozenset((ns, pod, f) for (ns, pod), fs in faults.items() for f in fs)
    new = sorted({(ns, pod) for ns, pod, _ in now - seen})
    wake: list[tuple[str, str]] = []
    for ns, pod in new:
        key = job_of(ns, pod)
        if key is not None and key not in wake:
            wake.append(key)
    return wake, now
