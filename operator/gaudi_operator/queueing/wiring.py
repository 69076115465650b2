"""Kueue admission's wiring, thin: a job, its pods or its Workload changed, so look again
(called by the one handler per resource, `gaudi_operator.handlers`). Decisions live in
`policy`; effects in `effects`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from gaudi_operator.clients import kube
from gaudi_operator.jobs.gaudi import GaudiSettings
from gaudi_operator.queueing.effects import Admission, AdmissionController, may_be_queued
from gaudi_operator.runtime import failpoints


async def start(
    memo: kopf.Memo,
    clients: kube.Clients,
    resync_seconds: float = 30.0,
    gaudi: GaudiSettings | None = None,
) -> None:
    controller = AdmissionController(Admission(clients, resync_seconds=resync_seconds, gaudi=gaudi))
    controller.start()
    memo["queueing"] = controller


async def stop(memo: kopf.Memo) -> None:
    controller: AdmissionController | None = memo.get("queueing")
    if controller is not None:
        await controller.stop()


Key = tuple[str, str]  # (namespace, job name)


def _wake(
    memo: kopf.Memo,
    key: Key,
    jobs: Mapping[Key, Any],
    pods: Mapping[Key, Any],
    workload_deleting: bool = False,
) -> None:
    controller: AdmissionController | None = memo.get("queueing")
    if controller is None:
        return
    if controller.jobs is None:
        controller.bind(jobs, pods)
    controller.enqueue(key, workload_deleting)


def job_seen(
    memo: kopf.Memo,
    type: str | None,
    key: Key,
    body: Mapping[str, Any],
    jobs: Mapping[Key, Any],
    pods: Mapping[Key, Any],
) -> None:
    if type != "DELETED":
        _wake(memo, key, jobs, pods)
    elif may_be_queued(body):
        # The garbage collector deletes its Workload next: look after it even if the
        # Workload's own events never reach us (see effects.ORPHAN_RECHECK_SECONDS).
        _wake(memo, key, jobs, pods, workload_deleting=True)


def workload_seen(
    memo: kopf.Memo,
    key: Key,
    meta: Mapping[str, Any],
    jobs: Mapping[Key, Any],
    pods: Mapping[Key, Any],
) -> None:
    if failpoints.armed("drop-workload-events"):
        return  # tests: a watch that never delivers (the safety nets must cope)
    _wake(memo, key, jobs, pods, bool(meta.get("deletionTimestamp")))


def pod_seen(memo: kopf.Memo, key: Key, jobs: Mapping[Key, Any], pods: Mapping[Key, Any]) -> None:
    # An evicted job hands its quota back once its last worker is gone.
    _wake(memo, key, jobs, pods)
