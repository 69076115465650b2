"""Kueue admission, acted out: read the job's Workload, decide (`queueing.policy.decide`),
then write — the Workload, its status, the job's `Queued` condition and `spec.suspend`.

Order matters: the `Queued` condition is written before `spec.suspend`, because the jobs
plan holds a queued job on the condition alone; so no worker starts before admission is
recorded, and an evicted job is held (with Kueue's reason) before it is suspended.
Every write of a status is guarded by the resourceVersion it read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from gaudi_operator import api
from gaudi_operator.api import GaudiTrainingJobSpec
from gaudi_operator.clients import kube
from gaudi_operator.jobs.gaudi import GaudiSettings
from gaudi_operator.jobs.observation import WorkerPod, parse_status
from gaudi_operator.observability.events import post_event
from gaudi_operator.queueing import policy
from gaudi_operator.runtime.packed import unpack
from gaudi_operator.runtime.status_writer import QUEUEING, RetrySoon, StatusWriter
from gaudi_operator.runtime.supervision import supervise
from gaudi_operator.runtime.workqueue import WorkQueue

log = logging.getLogger(__name__)

Key = tuple[str, str]
KUEUE_MISSING = "KueueNotInstalled"
# Safety nets for a Workload event that never reaches us (a watch restarted, or Kueue
# installed after the operator: kopf starts watching Workloads only once API discovery
# lists them, and can miss that moment): every queued job that has not finished gets a
# pass each resync interval (the jobs controller's, `--resync-seconds`), and a deleted
# queued job's Workload is looked at this often until it is gone.
ORPHAN_RECHECK_SECONDS = 5.0


class Admission:
    """One pass for one job: its Workload in step with it, and it in step with Kueue."""

    def __init__(
        self,
        clients: kube.Clients,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        resync_seconds: float = 30.0,
        gaudi: GaudiSettings | None = None,
    ) -> None:
        self.clients = clients
        self.status = StatusWriter(clients)
        self._clock = clock
        self.resync_seconds = resync_seconds
        self.gaudi = gaudi or GaudiSettings()  # the workers' pod contract, for the pod set

    async def sync(self, body: Mapping[str, Any], pods: Iterable[WorkerPod]) -> float | None:
        """Returns when to look again (None: the next event will do)."""
        meta = body.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            return None  # the Workload goes with the job (owner reference)
        if not may_be_queued(body):
            return None  # never queued: decided without parsing the spec (every event)
        try:
            spec = GaudiTrainingJobSpec.model_validate(dict(body.get("spec") or {}))
        except ValidationError:
            return None  # the jobs plan reports InvalidSpec
        status = parse_status(body.get("status") or {})
        if not policy.managed(spec) and api.get_condition(status.conditions, policy.QUEUED) is None:
            return None  # never queued: nothing to look up
        job = policy.JobFacts(
            name=meta.get("name", ""),
            namespace=meta.get("namespace", ""),
            uid=meta.get("uid", ""),
            generation=int(meta.get("generation") or 0),
            spec=spec,
            status=status,
            live_workers=sum(1 for p in pods if not p.terminal),
        )
        now = self._clock()
        try:
            wl = await self._workload(job)
        except Exception as err:
            if kube.status_code(err) != 404:
                raise
            # 404 on the collection itself: Kueue's CRDs are not installed.
            await self._set_queued(
                job,
                body,
                (True, KUEUE_MISSING, "Kueue is not installed (no Workload API in the cluster)"),
                [],
            )
            if not spec.suspend:
                await self._suspend(job, True)
            return 30.0
        priority = await self._priority(meta, spec) if wl is None else None
        d = policy.decide(job, wl, now, priority, self.gaudi)

        if d.delete is not None:
            await self._delete_workload(job.namespace, d.delete)
        if d.create is not None:
            await self._create_workload(job.namespace, d.create)
        # The condition first: it is what holds the job in the jobs plan, so the job is
        # held before spec.suspend says so, and released only after it.
        if d.queued is not None:
            await self._set_queued(job, body, d.queued, d.events)
        if d.suspend is not None:
            await self._suspend(job, d.suspend)
        if d.workload_status is not None and wl is not None:
            await self._patch_workload_status(job.namespace, wl, d.workload_status)
        if wl is not None and wl.deleting:
            await self.release(job.namespace, [wl], job.live_workers)
        # An evicted job waits for its workers to go before the quota is handed back:
        # pod events wake us, and this is the safety net.
        if wl is not None and wl.evicted is not None:
            return 5.0
        if job.status.phase.finished or not policy.managed(spec):
            return None
        return self.resync_seconds

    async def release_orphans(self, namespace: str, job: str, live_workers: int) -> bool:
        """The job is gone: let its deleted Workloads go once its last worker has.
        True when no Workload of the job is left (the garbage collector deletes them after
        the job; until it has, there is one to wait for)."""
        selector = f"{api.LABEL_JOB_NAME}={job},{api.LABEL_MANAGED_BY}={api.MANAGED_BY}"
        try:
            found = await self.clients.get(_workloads(namespace), {"labelSelector": selector})
        except Exception as err:
            if kube.status_code(err) == 404:
                return True
            raise
        left = [policy.read_workload(o) for o in found.get("items") or []]
        waiting = [w for w in left if w.deleting and policy.FINALIZER in w.finalizers]
        await self.release(namespace, waiting, live_workers)
        released = live_workers == 0 and len(waiting) == len(left)
        return not left or released

    async def release(
        self, namespace: str, workloads: Iterable[policy.WorkloadView], live_workers: int
    ) -> None:
        for wl in workloads:
            keep = policy.releasable(wl, live_workers)
            if keep is None:
                continue
            try:
                await self.clients.patch(
                    _workloads(namespace, wl.name),
                    {"metadata": {"finalizers": keep, "resourceVersion": wl.resource_version}},
                )
            except Exception as err:
                if kube.status_code(err) != 404:
                    raise

    # --- reads ------------------------------------------------------------------------

    async def _workload(self, job: policy.JobFacts) -> policy.WorkloadView | None:
        name = policy.workload_name(job.name, job.uid)
        try:
            obj = await self.clients.get(_workloads(job.namespace, name))
        except Exception as err:
            # A missing Workload is `workloads.kueue.x-k8s.io "<name>" not found`; a missing
            # Workload API is a bare 404, which the caller reports as Kueue not installed.
            if kube.status_code(err) != 404 or f'"{name}"' not in kube.api_message(err):
                raise
            return None
        return policy.read_workload(obj)

    async def _priority(
        self, meta: Mapping[str, Any], spec: GaudiTrainingJobSpec
    ) -> policy.Priority | None:
        """Kueue's WorkloadPriorityClass label wins, as for Kueue's own integrations; else
        the workers' PriorityClass."""
        wpc = (meta.get("labels") or {}).get(policy.PRIORITY_CLASS_LABEL)
        try:
            if wpc:
                obj = await self.clients.get(
                    kube.custom_path(
                        policy.KUEUE_GROUP,
                        policy.WORKLOAD_VERSION,
                        None,
                        "workloadpriorityclasses",
                        wpc,
                    )
                )
                return policy.Priority("WorkloadPriorityClass", wpc, int(obj["value"]))
            if spec.scheduling.priority_class_name:
                name = spec.scheduling.priority_class_name
                obj = await self.clients.get(
                    kube.custom_path("scheduling.k8s.io", "v1", None, "priorityclasses", name)
                )
                return policy.Priority("PriorityClass", name, int(obj["value"]))
        except Exception as err:
            if kube.status_code(err) != 404:
                raise
            log.warning("%s/%s: priority class not found", meta.get("namespace"), meta.get("name"))
        return None

    # --- writes -----------------------------------------------------------------------

    async def _create_workload(self, namespace: str, manifest: dict[str, Any]) -> None:
        try:
            await kube.create(self.clients, _workloads(namespace), manifest)
        except Exception as err:
            if kube.status_code(err) == 409:
                return
            if kube.status_code(err) == 403 and "NamespaceTerminating" in str(
                getattr(err, "body", "")
            ):
                return  # the job goes with its namespace: nothing to queue
            raise

    async def _delete_workload(self, namespace: str, name: str) -> None:
        try:
            await self.clients.delete(_workloads(namespace, name))
        except Exception as err:
            if kube.status_code(err) != 404:
                raise

    async def _patch_workload_status(
        self, namespace: str, wl: policy.WorkloadView, patch: dict[str, Any]
    ) -> None:
        # A conflict means Kueue wrote meanwhile: the caller's retry decides again.
        await self.clients.patch(
            _workloads(namespace, wl.name, "status"),
            {"metadata": {"resourceVersion": wl.resource_version}, "status": patch},
        )

    async def _suspend(self, job: policy.JobFacts, value: bool) -> None:
        await self.clients.patch(
            kube.custom_path(api.GROUP, api.VERSION, job.namespace, api.PLURAL, job.name),
            {"metadata": {"uid": job.uid}, "spec": {"suspend": value}},
        )

    async def _set_queued(
        self,
        job: policy.JobFacts,
        body: Mapping[str, Any],
        queued: tuple[bool, str, str],
        events: list[tuple[str, str, str]],
    ) -> None:
        waiting, reason, message = queued

        def same(conditions: list[api.Condition]) -> bool:
            old = api.get_condition(conditions, policy.QUEUED)
            return (
                old is not None
                and (old.status == "True") == waiting
                and old.reason == reason
                and old.message == message
            )

        if same(job.status.conditions):
            return  # as the watch last saw it: nothing to write
        conditions = api.set_condition(
            job.status.conditions,
            policy.QUEUED,
            waiting,
            reason,
            message,
            self._clock(),
            job.generation,
        )
        # Through the one status writer: guarded by the version the watch showed, the
        # Queued condition rebased onto the others' conditions on a conflict; a Queued
        # condition changed meanwhile is RetrySoon, and the pass runs again.
        written = await self.status.write(
            body,
            {"conditions": [c.to_dict() for c in conditions]},
            writer=QUEUEING,
            fields=("conditions",),
        )
        for type_, why, text in events:
            await post_event(self.clients, written or body, type_, why, text)


class AdmissionController:
    """Passes of `Admission` over a keyed work queue: one at a time per job, retried with
    back-off on errors (a conflict with Kueue's own writes is the usual one)."""

    def __init__(
        self,
        admission: Admission,
        jobs: Mapping[Key, Any] | None = None,
        pods: Mapping[Key, Any] | None = None,
        workers: int = 2,
    ) -> None:
        self.admission = admission
        self.jobs, self.pods = jobs, pods
        self.queue = WorkQueue()
        self._workers = workers
        self._failures: dict[Key, int] = {}
        self._tasks: list[asyncio.Task[None]] = []
        # Jobs with a Workload being deleted: looked up even after the job itself is gone.
        self._deleting: set[Key] = set()

    def bind(self, jobs: Mapping[Key, Any], pods: Mapping[Key, Any]) -> None:
        self.jobs, self.pods = jobs, pods

    def start(self) -> None:
        if self._tasks:
            return  # started already (a retried start-up)
        # Supervised like every background loop: restarted with back-off, seen by /healthz.
        for i in range(self._workers):
            self._tasks.append(supervise(f"queueing-{i}", self._work))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self.queue.close()

    def enqueue(self, key: Key, workload_deleting: bool = False) -> None:
        if workload_deleting:
            self._deleting.add(key)
        self.queue.add(key)

    async def _work(self) -> None:
        while True:
            key = await self.queue.get()
            try:
                await self._process(key)  # type: ignore[arg-type]
            finally:
                self.queue.done(key)

    async def _process(self, key: Key) -> None:
        body = unpack(next(iter((self.jobs or {}).get(key) or ()), None))
        pods = list((self.pods or {}).get(key) or ())
        try:
            if body is None:  # deleted: its Workloads wait for its workers, then go
                again = None
                if key in self._deleting:
                    live = sum(1 for p in pods if not p.terminal)
                    if await self.admission.release_orphans(key[0], key[1], live):
                        self._deleting.discard(key)
                    else:
                        again = ORPHAN_RECHECK_SECONDS
                else:
                    self.queue.forget(key)
            else:
                again = await self.admission.sync(body, pods)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            n = self._failures.get(key, 0) + 1
            self._failures[key] = n
            delay = min(60.0, 0.25 * 2**n)
            if kube.status_code(err) == 409 or isinstance(err, RetrySoon):
                log.debug("%s/%s: conflict, retry in %.1fs", *key, delay)
            else:
                log.exception("queueing %s/%s failed (retry in %.1fs)", *key, delay)
            self.queue.add_after(key, delay)
            return
        self._failures.pop(key, None)
        if again is not None:
            self.queue.add_after(key, again)


def may_be_queued(body: Mapping[str, Any]) -> bool:
    """A queue name in the raw spec or a Queued condition: the cheap half of the checks
    below (`policy.managed` needs a queue), run on every job and pod event."""
    scheduling = (body.get("spec") or {}).get("scheduling") or {}
    conditions = (body.get("status") or {}).get("conditions") or []
    return bool(scheduling.get("queue")) or any(
        c.get("type") == policy.QUEUED for c in conditions if isinstance(c, Mapping)
    )


def _workloads(namespace: str, name: str = "", sub: str = "") -> str:
    return kube.custom_path(
        policy.KUEUE_GROUP, policy.WORKLOAD_VERSION, namespace, policy.WORKLOAD_PLURAL, name, sub
    )
