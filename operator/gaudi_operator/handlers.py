"""The operator's kopf handlers for resources: one index and one event handler per
resource, which feed every behaviour (jobs, queueing, autoscaling, failover).

kopf builds a full set of keyword arguments and an outcome for each handler it runs on
each watch event; with one handler per behaviour a job event ran five handlers and a pod
event four (the largest share of the operator's CPU at a thousand jobs,
docs/performance.md). Each behaviour's `wiring` module now keeps plain functions that
these handlers call in a fixed order. The indices stay kopf's: kopf runs no event
handler until every index has seen its resource's first listing, so no pass ever decides
from a half-listed cluster (that is what makes a restarted operator create nothing twice).

Every handler is `async`: kopf runs a plain `def` in a thread pool, and these touch the
work queue and caches that the event loop owns (tests/unit/test_handlers_async.py).
"""

from __future__ import annotations

from typing import Any

import kopf

from gaudi_operator import api
from gaudi_operator.autoscaling import wiring as autoscaling
from gaudi_operator.failover import wiring as failover
from gaudi_operator.jobs import wiring as jobs
from gaudi_operator.jobs.observation import observe_pod
from gaudi_operator.queueing import policy as queueing_policy
from gaudi_operator.queueing import wiring as queueing

CHILD_LABELS = {api.LABEL_MANAGED_BY: api.MANAGED_BY, api.LABEL_JOB_NAME: kopf.PRESENT}

# --- indices: what the passes read -------------------------------------------------------


@kopf.index(api.GROUP, api.VERSION, api.PLURAL)
async def gtj_jobs(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, name): jobs.index_body(body)}


@kopf.index("v1", "pods", labels=CHILD_LABELS)
async def gtj_pods(
    namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Any, Any]:
    return {(namespace, labels[api.LABEL_JOB_NAME]): observe_pod(body)}


@kopf.index("v1", "services", labels=CHILD_LABELS)
async def gtj_services(namespace: str, labels: kopf.Labels, name: str, **_: Any) -> dict[Any, Any]:
    return {(namespace, labels[api.LABEL_JOB_NAME]): name}


# --- one event handler per resource --------------------------------------------------------


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)
async def job_event(
    type: str | None,
    namespace: str,
    name: str,
    body: kopf.Body,
    spec: kopf.Spec,
    status: kopf.Status,
    memo: kopf.Memo,
    gtj_jobs: kopf.Index[Any, Any],
    gtj_pods: kopf.Index[Any, Any],
    gtj_services: kopf.Index[Any, Any],
    **_: Any,
) -> None:
    key = (namespace, name)
    jobs.job_seen(memo, type, key, gtj_jobs, gtj_pods, gtj_services)
    queueing.job_seen(memo, type, key, body, gtj_jobs, gtj_pods)
    autoscaling.job_seen(memo, type, key, spec, status)


@kopf.on.event("v1", "pods", labels=CHILD_LABELS)
async def pod_event(
    type: str | None,
    namespace: str,
    name: str,
    uid: str,
    labels: kopf.Labels,
    meta: kopf.Meta,
    body: kopf.Body,
    memo: kopf.Memo,
    gtj_jobs: kopf.Index[Any, Any],
    gtj_pods: kopf.Index[Any, Any],
    gtj_services: kopf.Index[Any, Any],
    **_: Any,
) -> None:
    key = (namespace, labels[api.LABEL_JOB_NAME])
    # A vanished worker is recorded before its job is woken (the pass reads the record).
    failover.pod_seen(memo, type, key, body)
    jobs.pod_seen(memo, type, key, name, uid, labels, meta, body, gtj_jobs, gtj_pods, gtj_services)
    # An evicted job hands its quota back once its last worker is gone.
    queueing.pod_seen(memo, key, gtj_jobs, gtj_pods)


@kopf.on.event("v1", "services", labels=CHILD_LABELS)
async def service_event(
    namespace: str,
    labels: kopf.Labels,
    memo: kopf.Memo,
    gtj_jobs: kopf.Index[Any, Any],
    gtj_pods: kopf.Index[Any, Any],
    gtj_services: kopf.Index[Any, Any],
    **_: Any,
) -> None:
    key = (namespace, labels[api.LABEL_JOB_NAME])
    jobs.wake(memo, key, gtj_jobs, gtj_pods, gtj_services)


@kopf.on.event("v1", "nodes")
async def node_event(
    type: str | None, name: str, labels: kopf.Labels, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    failover.node_seen(memo, type, name, body)
    jobs.node_seen(memo, type, name, labels)


@kopf.on.event(
    queueing_policy.KUEUE_GROUP,
    queueing_policy.WORKLOAD_VERSION,
    queueing_policy.WORKLOAD_PLURAL,
    labels=CHILD_LABELS,
)
async def workload_event(
    namespace: str,
    labels: kopf.Labels,
    meta: kopf.Meta,
    memo: kopf.Memo,
    gtj_jobs: kopf.Index[Any, Any],
    gtj_pods: kopf.Index[Any, Any],
    **_: Any,
) -> None:
    queueing.workload_seen(memo, (namespace, labels[api.LABEL_JOB_NAME]), meta, gtj_jobs, gtj_pods)
