"""kopf wiring of Kueue admission, thin: a job or its Workload changed, so look again.
Decisions live in `policy`; effects in `effects`."""

from __future__ import annotations

from typing import Any

import kopf

from gaudi_operator import api
from gaudi_operator.clients import kube
from gaudi_operator.jobs.gaudi import GaudiSettings
from gaudi_operator.queueing import policy
from gaudi_operator.queueing.effects import Admission, AdmissionController, may_be_queued
from gaudi_operator.runtime import failpoints

CHILD_LABELS = {api.LABEL_MANAGED_BY: api.MANAGED_BY, api.LABEL_JOB_NAME: kopf.PRESENT}


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


def _wake(
    memo: kopf.Memo, key: tuple[str, str], indices: dict[str, Any], workload_deleting: bool = False
) -> None:
    controller: AdmissionController | None = memo.get("queueing")
    if controller is None:
        return
    if controller.jobs is None:
        controller.bind(indices["gtj_jobs"], indices["gtj_pods"])
    controller.enqueue(key, workload_deleting)


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL, id="queueing")
async def job_event(
    type: str | None,
    namespace: str,
    name: str,
    body: kopf.Body,
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    if type != "DELETED":
        _wake(memo, (namespace, name), kwargs)
    elif may_be_queued(body):
        # The garbage collector deletes its Workload next: look after it even if the
        # Workload's own events never reach us (see effects.ORPHAN_RECHECK_SECONDS).
        _wake(memo, (namespace, name), kwargs, workload_deleting=True)


@kopf.on.event(
    policy.KUEUE_GROUP, policy.WORKLOAD_VERSION, policy.WORKLOAD_PLURAL, labels=CHILD_LABELS
)
async def workload_event(
    namespace: str, labels: kopf.Labels, meta: kopf.Meta, memo: kopf.Memo, **kwargs: Any
) -> None:
    if failpoints.armed("drop-workload-events"):
        return  # tests: a watch that never delivers (the safety nets must cope)
    deleting = bool(meta.get("deletionTimestamp"))
    _wake(memo, (namespace, labels[api.LABEL_JOB_NAME]), kwargs, deleting)


@kopf.on.event("v1", "pods", labels=CHILD_LABELS, id="queueing")
async def pod_event(namespace: str, labels: kopf.Labels, memo: kopf.Memo, **kwargs: Any) -> None:
    # An evicted job hands its quota back once its last worker is gone.
    _wake(memo, (namespace, labels[api.LABEL_JOB_NAME]), kwargs)
