"""The stall clock: one loop for all jobs reads each running job's training step from
Prometheus, records in status.progress when it last advanced, and wakes the job when it
has not moved for `failurePolicy.stallTimeoutSeconds` (the pass then decides).

No kopf timer: that would put a finalizer on every job.
"""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from gaudi_operator import api
from gaudi_operator.api import GaudiTrainingJobSpec, Phase
from gaudi_operator.clients import kube
from gaudi_operator.failover.policy import advance_progress
from gaudi_operator.failover.signals import PROBES

log = logging.getLogger(__name__)

STALL_POLL_SECONDS = float(os.environ.get("GAUDI3_STALL_POLL_SECONDS", "5"))


async def stall_loop(memo: Any) -> None:
    while True:
        await asyncio.sleep(STALL_POLL_SECONDS)
        controller, clients = memo.get("controller"), memo.get("clients")
        if controller is None or clients is None or controller.jobs is None:
            continue
        for key, store in list(controller.jobs.items()):
            body = next(iter(store), None)
            if body is None:
                continue
            try:
                if await check_progress(clients, body):
                    controller.enqueue(key)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # one job's trouble must not stop the clock for all
                log.warning("stall check of %s/%s failed: %s", *key, err)


async def check_progress(clients: kube.Clients, body: dict[str, Any]) -> bool:
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
    step = await PROBES.training_step(name, namespace, spec.autoscaling.prometheus_url)
    progress = status.get("progress") or {}
    prev_step = progress.get("step")
    prev_time = api.parse_rfc3339(progress.get("time"))
    now = datetime.now(UTC)
    new_step, new_time = advance_progress(prev_step, prev_time, step, now)
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
