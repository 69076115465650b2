"""One level-based pass over one job: plan (pure, `jobs.plan.plan`), then act.

Acting is idempotent because every child has a deterministic name: creating a pod that
already exists is a 409 and means "already done"; deleting one that is gone is a 404.
So a pass after an operator crash, a stale cache or a duplicate event does no harm.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from gaudi_operator import api
from gaudi_operator.api import ConditionType, GaudiTrainingJobSpec, Phase
from gaudi_operator.clients import kube
from gaudi_operator.failover.policy import Verdict
from gaudi_operator.failover.recording import RECORDER
from gaudi_operator.failover.signals import DISRUPTIONS, signals_for
from gaudi_operator.jobs import manifests
from gaudi_operator.jobs import plan as job_plan
from gaudi_operator.jobs.gaudi import DEFAULTS, GaudiSettings, ScaleOutNodes
from gaudi_operator.jobs.observation import JobView, WorkerPod, observe
from gaudi_operator.jobs.plan import Event, Plan
from gaudi_operator.observability import metrics
from gaudi_operator.observability.events import post_event
from gaudi_operator.runtime import failpoints
from gaudi_operator.runtime.controller import RetrySoon

log = logging.getLogger(__name__)


@dataclass
class Result:
    plan: Plan
    body: dict[str, Any] | None = None  # the job as the API server returned it after our write
    pending: int = 0  # worker pods waiting to be scheduled or started
    # Versions we wrote in this pass before `body`: the index showing one of them lags.
    superseded: list[str] = field(default_factory=list)

    @property
    def phase(self) -> str:
        return self.plan.status.phase.value

    @property
    def requeue_after(self) -> float | None:
        return self.plan.requeue_after

    @property
    def workers(self) -> dict[str, int]:
        plan = self.plan
        # A finished, suspended or invalid job wants no workers.
        desired = plan.spec.workers.replicas if plan.ensure_children and plan.spec else 0
        return {"desired": desired, "ready": plan.status.ready_replicas, "pending": self.pending}

    @property
    def conditions(self) -> dict[str, bool]:
        return {c.type: c.status == "True" for c in self.plan.status.conditions}


def status_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch from old to new status: changed keys, and null for removed ones,
    nested objects included (each status field is replaced whole, never mixed)."""
    return kube.merge_patch(old, new)


# What a restart decides, written before any pod is touched (see `Reconciler.reconcile`).
INTENT_FIELDS = ("restartGeneration", "restarts", "lastFailure", "excludedNodes")


def intent_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch of the intent fields alone; empty when the pass decided no restart."""
    return kube.merge_patch(
        {k: old[k] for k in INTENT_FIELDS if k in old},
        {k: new[k] for k in INTENT_FIELDS if k in new},
    )


def restarts(plan: Plan) -> bool:
    decision = plan.failover.decision if plan.failover is not None else None
    return decision is not None and decision.verdict == Verdict.RESTART


def merge_conditions(
    old: Sequence[Mapping[str, Any]],
    new: Sequence[Mapping[str, Any]],
    current: Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """Rebase this pass's condition changes onto the conditions the server has now.

    A merge patch replaces the whole list, and another writer (the autoscaler) may have set
    its own condition types since this pass read the job: keep theirs, apply only the types
    this pass added, changed or removed.
    """
    before = {c.get("type"): c for c in old}
    after = {c.get("type"): c for c in new}
    changed = {t for t in after if before.get(t) != after[t]}
    removed = {t for t in before if t not in after}
    merged = [
        dict(after[c.get("type")]) if c.get("type") in changed else dict(c)
        for c in current
        if c.get("type") not in removed
    ]
    have = {c.get("type") for c in merged}
    merged += [dict(after[t]) for t in after if t in changed and t not in have]
    return merged


def summarize_indices(indices: Iterable[int]) -> str:
    """[0,1,2,5,7,8] -> "0-2,5,7-8": readable events for jobs with hundreds of workers."""
    out: list[str] = []
    run: list[int] = []
    for i in sorted(indices):
        if run and i == run[-1] + 1:
            run.append(i)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [i]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


class Reconciler:
    def __init__(
        self,
        clients: kube.Clients,
        *,
        pod_concurrency: int = 32,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        gaudi: GaudiSettings = DEFAULTS,
        scale_out_nodes: ScaleOutNodes | None = None,
    ) -> None:
        self.clients = clients
        self.gaudi = gaudi
        # Fed by the node watch (jobs.wiring); without one the gate's state is unknown.
        self.scale_out_nodes = scale_out_nodes or ScaleOutNodes(None)
        # One bound for the whole operator: a 1000-worker job must not open 1000 requests.
        self._pod_slots = asyncio.Semaphore(pod_concurrency)
        self._clock = clock
        self._gang_warned: set[tuple[str, str]] = set()
        metrics.track_cache("gang_warned", lambda: len(self._gang_warned))

    def forget(self, key: tuple[str, str]) -> None:
        """The job is gone: what the operator remembers of it goes too."""
        self._gang_warned.discard(key)
        RECORDER.forget(key)
        DISRUPTIONS.handled(*key)

    async def reconcile(
        self, body: Mapping[str, Any], observed: Iterable[WorkerPod], service_exists: bool
    ) -> Result:
        job = JobView.from_body(body)
        obs = observe(job, observed, self._clock())  # parsed once, here at the edge
        obs = replace(obs, signals=await signals_for(obs))  # nodes, HPU health, vanished pods
        obs = replace(obs, scale_out=self.scale_out_nodes.view())
        plan = job_plan.decide(obs)
        now = obs.now
        if job.deleting:
            return Result(plan)
        if plan.delete_job:
            await self._post(body, plan.events)
            await self._delete_job(job)
            return Result(plan)

        # Commit before act: a restart's intent (count, generation, failure, excluded nodes)
        # is written first, guarded by the version this pass decided from. A crash after
        # this line converges on restart (old-generation pods are surplus) and counts
        # nothing twice; a conflict means the view was stale, and nothing was done.
        read: Mapping[str, Any] = body
        written: dict[str, Any] | None = None
        new = plan.status.to_dict()
        intent = intent_patch(body.get("status") or {}, new) if restarts(plan) else {}
        if intent:
            written = await self._commit_intent(job, body, intent)
            read = written
            failpoints.hit("after-restart-intent")

        events = list(plan.events)
        if plan.spec is not None and plan.ensure_children:
            ref = manifests.JobRef(job.name, job.namespace, job.uid)
            if not service_exists:
                await self._create(job, manifests.service_manifest(ref), "Service")
            await self._ensure_pod_group(job, plan.spec, ref, events)
            rejected = await self._create_workers(job, plan, ref, events)
            if rejected:
                _mark_rejected(plan, rejected, job.generation, now, events)
        await self._delete_workers(job, plan, events)
        if any(e.reason == "InvalidSpec" for e in events):
            metrics.INVALID_SPECS.inc()
        await self._post(body, events)
        final = await self._write_status(job, read, plan)
        # Our intent commit is superseded by the status write: while the index shows it,
        # the index is behind us (see runtime.controller.Written).
        superseded = [_rv(written)] if written is not None and final is not None else []
        RECORDER.after_pass(job, plan, events, now)  # failover metrics
        pending = sum(1 for p in obs.pods if p.phase == "Pending" and not p.deleting)
        return Result(plan, final or written, pending, superseded)

    # --- children -----------------------------------------------------------------------

    async def _create(self, job: JobView, manifest: dict[str, Any], what: str) -> None:
        try:
            if manifest["kind"] == "Service":
                path = kube.core_path(job.namespace, "services")
                await kube.create(self.clients, path, manifest)
            else:
                group, version = manifest["apiVersion"].split("/")
                await self.clients.custom.create_namespaced_custom_object(
                    group, version, job.namespace, "podgroups", manifest
                )
        except Exception as err:
            if kube.status_code(err) != 409:
                raise

    async def _ensure_pod_group(
        self, job: JobView, spec: GaudiTrainingJobSpec, ref: manifests.JobRef, events: list[Event]
    ) -> None:
        manifest = manifests.pod_group_manifest(spec, ref)
        if manifest is None:
            return
        try:
            await self._create(job, manifest, "PodGroup")
        except Exception as err:
            if kube.status_code(err) != 404:
                raise
            # The gang scheduler's CRD is not installed: run without it, say so once.
            key = (job.namespace, job.name)
            if key not in self._gang_warned:
                self._gang_warned.add(key)
                events.append(
                    Event(
                        "Warning",
                        "GangSchedulingUnavailable",
                        f"spec.scheduling.gang: cannot create {manifest['apiVersion']} PodGroup "
                        f"(is {spec.scheduling.scheduler_name} installed?); workers are created "
                        f"without it",
                    )
                )

    async def _create_workers(
        self, job: JobView, plan: Plan, ref: manifests.JobRef, events: list[Event]
    ) -> str | None:
        """Create the missing workers concurrently; returns the API's message if it refused them."""
        if not plan.create or plan.spec is None:
            return None
        spec, status = plan.spec, plan.status
        excluded = status.excluded_nodes if spec.failure_policy.exclude_failed_nodes else []
        gen = status.restart_generation
        pods_path = kube.core_path(job.namespace, "pods")

        async def create(index: int) -> str:
            manifest = manifests.worker_pod_manifest(spec, ref, index, gen, excluded, self.gaudi)
            async with self._pod_slots:
                try:
                    await kube.create(self.clients, pods_path, manifest)
                except Exception as err:
                    code = kube.status_code(err)
                    if code == 409:
                        return "exists"
                    if code == 422:
                        return "rejected:" + kube.api_message(err)
                    if code == 403:
                        return "forbidden:" + kube.api_message(err)
                    raise
            return "created"

        results = await asyncio.gather(*(create(i) for i in plan.create), return_exceptions=True)
        created = [i for i, r in zip(plan.create, results, strict=True) if r == "created"]
        if created:
            metrics.PODS_CREATED.inc(len(created))
            events.append(
                Event(
                    "Normal",
                    "CreatedWorkers",
                    f"created {len(created)} worker pods (indices {summarize_indices(created)}, "
                    f"generation {gen})",
                )
            )
        for r in results:
            if isinstance(r, str) and r.startswith("forbidden:"):
                events.append(Event("Warning", "FailedCreate", r.removeprefix("forbidden:")))
                break
        errors = [r for r in results if isinstance(r, BaseException)]
        rejected = next(
            (r for r in results if isinstance(r, str) and r.startswith("rejected:")), None
        )
        if errors and not rejected:
            raise errors[0]
        return rejected.removeprefix("rejected:") if rejected else None

    async def _delete_workers(self, job: JobView, plan: Plan, events: list[Event]) -> None:
        if not plan.delete:
            return
        reason = (
            "suspend"
            if plan.status.phase == Phase.SUSPENDED
            else "cleanup"
            if plan.status.phase.finished
            else "surplus"
        )

        async def delete(pod: WorkerPod) -> bool:
            # The uid precondition: never delete a same-named pod created since we looked.
            options: dict[str, Any] = {"preconditions": {"uid": pod.uid}} if pod.uid else {}
            if pod.name in plan.force_delete:
                options["gracePeriodSeconds"] = 0  # its node is dead: nobody would confirm
            async with self._pod_slots:
                try:
                    await self.clients.core.delete_namespaced_pod(
                        pod.name, job.namespace, body=options
                    )
                except Exception as err:
                    if kube.status_code(err) in (404, 409):
                        return False
                    raise
            return True

        # Our own deletions are not disruptions (failover watches for deleted workers).
        DISRUPTIONS.deleting(p.uid for p in plan.delete)
        # Highest index first: on scale-down the tail of the world goes, rank 0 stays.
        results = await asyncio.gather(*(delete(p) for p in plan.delete), return_exceptions=True)
        deleted = [p for p, r in zip(plan.delete, results, strict=True) if r is True]
        if deleted:
            metrics.PODS_DELETED.labels(reason=reason).inc(len(deleted))
            names = summarize_indices(p.index for p in deleted if p.index is not None)
            events.append(
                Event(
                    "Normal",
                    "DeletedWorkers",
                    f"deleted {len(deleted)} worker pods (indices {names or '-'}; {reason})",
                )
            )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]

    async def _delete_job(self, job: JobView) -> None:
        try:
            await self.clients.custom.delete_namespaced_custom_object(
                api.GROUP,
                api.VERSION,
                job.namespace,
                api.PLURAL,
                job.name,
                body={"preconditions": {"uid": job.uid}},
                propagation_policy="Background",
            )
        except Exception as err:
            if kube.status_code(err) not in (404, 409):
                raise

    # --- status and events --------------------------------------------------------------

    async def _post(self, body: Mapping[str, Any], events: Iterable[Event]) -> None:
        for e in events:
            log.info("%s/%s: %s %s", _ns(body), _name(body), e.reason, e.message)
            await post_event(self.clients, body, e.type, e.reason, e.message)

    async def _commit_intent(
        self, job: JobView, body: Mapping[str, Any], intent: dict[str, Any]
    ) -> dict[str, Any]:
        rv = (body.get("metadata") or {}).get("resourceVersion")
        try:
            written: dict[
                str, Any
            ] = await self.clients.custom.patch_namespaced_custom_object_status(
                api.GROUP,
                api.VERSION,
                job.namespace,
                api.PLURAL,
                job.name,
                {"metadata": {"resourceVersion": rv}, "status": intent},
                _content_type=kube.MERGE_PATCH,
            )
        except Exception as err:
            if kube.status_code(err) in (404, 409):
                raise RetrySoon(f"the job changed since this pass read it ({err})") from err
            raise
        return written

    async def _write_status(
        self, job: JobView, read: Mapping[str, Any], plan: Plan
    ) -> dict[str, Any] | None:
        """Write this pass's status, guarded by the version it decided from (`read`).

        A conflict is another writer: the autoscaler's own fields and conditions are rebased
        onto; anything else (our own earlier write the index had not shown yet) means this
        pass decided from a stale copy, so nothing is written and the pass runs again.
        """
        old = read.get("status") or {}
        new = plan.status.to_dict()
        patch = status_patch(old, new)
        if not patch:
            return None
        rv = (read.get("metadata") or {}).get("resourceVersion")
        for attempt in range(3):
            body = {"metadata": {"resourceVersion": rv}, "status": patch}
            try:
                return await self.clients.custom.patch_namespaced_custom_object_status(
                    api.GROUP,
                    api.VERSION,
                    job.namespace,
                    api.PLURAL,
                    job.name,
                    body,
                    _content_type=kube.MERGE_PATCH,
                )
            except Exception as err:
                code = kube.status_code(err)
                if code == 404:
                    return None  # deleted meanwhile
                if code != 409 or attempt == 2:
                    raise
            current = await self.clients.custom.get_namespaced_custom_object(
                api.GROUP, api.VERSION, job.namespace, api.PLURAL, job.name
            )
            now_status = current.get("status") or {}
            if api.reconciler_part(now_status) != api.reconciler_part(old):
                raise RetrySoon("the job's status changed since this pass read it")
            if "conditions" in patch:
                patch["conditions"] = merge_conditions(
                    old.get("conditions") or [],
                    new.get("conditions") or [],
                    now_status.get("conditions") or [],
                )
            rv = current["metadata"]["resourceVersion"]
        return None


def _mark_rejected(
    plan: Plan, message: str, generation: int, now: datetime, events: list[Event]
) -> None:
    """The API server refused a worker pod (bad template, bad volume name, ...): InvalidSpec."""
    old = api.get_condition(plan.status.conditions, ConditionType.INVALID_SPEC)
    text = (
        "worker pods are rejected by the API server; fix spec.template or spec.resources: "
        + message
    )
    plan.status.conditions = api.set_condition(
        plan.status.conditions,
        ConditionType.INVALID_SPEC,
        True,
        job_plan.POD_REJECTED,
        text,
        now,
        generation,
    )
    if old is None or old.status != "True" or old.message != text:
        events.append(Event("Warning", "InvalidSpec", text))


def _name(body: Mapping[str, Any]) -> str:
    return str((body.get("metadata") or {}).get("name"))


def _ns(body: Mapping[str, Any]) -> str:
    return str((body.get("metadata") or {}).get("namespace"))


def _rv(body: Mapping[str, Any]) -> str:
    return str((body.get("metadata") or {}).get("resourceVersion") or "")
