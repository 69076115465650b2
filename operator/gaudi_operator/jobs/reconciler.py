"""One level-based pass over one job: decide (pure, `jobs.plan.decide`), then act, with
client-go's controller habits:

- intent before effect: a restart's count, generation, failure and (RecreateFailed) the
  pods it replaces are committed first, guarded by the version the pass decided from;
- expectations: the pods a pass creates or deletes are recorded before the requests go
  out, and the controller runs no further pass of the job until the pod watch has shown
  them (`runtime.expectations`): nothing is POSTed twice, no status comes from counts
  that miss the pass's own pods;
- one status writer (`runtime.status_writer`): status is written only when it changed,
  guarded by the version read, rebased onto the other writers' fields. Workers' progress
  on their way to Running waits up to `status_debounce_seconds` to go out with the next
  change (`jobs.plan.progress_only`), a job's first status up to 5 s
  (`jobs.plan.first_progress`): from create to Running a job costs one or two status
  writes;
- events after the status write that decides them (a pass whose write conflicts decides
  again, events included); events for what was done (pods created, deleted) once done.

Children have deterministic names: creating one that exists is a 409 ("already done"),
deleting one that is gone a 404. A pass after a crash or a duplicate event does no harm.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from gaudi_operator import api
from gaudi_operator.api import ConditionType, GaudiTrainingJobSpec, Phase
from gaudi_operator.clients import kube
from gaudi_operator.failover.launchers import LauncherWatch
from gaudi_operator.failover.policy import Verdict
from gaudi_operator.failover.recording import RECORDER
from gaudi_operator.failover.signals import DISRUPTIONS, signals_for
from gaudi_operator.jobs import manifests, spares
from gaudi_operator.jobs import plan as job_plan
from gaudi_operator.jobs.gaudi import DEFAULTS, GaudiSettings, ScaleOutNodes
from gaudi_operator.jobs.observation import JobView, WorkerPod, observe
from gaudi_operator.jobs.plan import Event, Plan
from gaudi_operator.observability import metrics
from gaudi_operator.observability.events import post_event
from gaudi_operator.runtime import failpoints
from gaudi_operator.runtime.expectations import Expectations
from gaudi_operator.runtime.status_writer import (
    RetrySoon,
    StatusWriter,
    merge_conditions,
    status_patch,
)
from gaudi_train.control_protocol import RESTART as RESTART_ACTION

log = logging.getLogger(__name__)

__all__ = [
    "INTENT_FIELDS",
    "Reconciler",
    "Result",
    "intent_patch",
    "merge_conditions",
    "status_patch",
    "summarize_indices",
]

# A worker refused for a reason that may pass (a namespace quota): tried again after this
# much, doubling each time up to the cap; the passes in between create nothing.
REFUSAL_BACKOFF_SECONDS = 5.0
REFUSAL_BACKOFF_MAX_SECONDS = 300.0
# Progress held back (see `Reconciler._write_status`) while a worker cannot be placed is
# written after this long at most: "why is my job Pending" must not wait the full debounce.
UNPLACED_DEBOUNCE_SECONDS = 5.0
# A job's first status, while its workers are on their way, is held this long at most
# (`jobs.plan.first_progress`): a job whose workers run within it gets one status write.
FIRST_STATUS_HOLD_SECONDS = 5.0
# A decision some launcher did not take (not up yet, a lost connection): told again after.
RETRY_DELIVERY_SECONDS = 1.0

Key = tuple[str, str]  # (namespace, job name)


@dataclass
class Result:
    plan: Plan
    body: dict[str, Any] | None = None  # the job as the API server returned it after our write
    pending: int = 0  # worker pods waiting to be scheduled or started
    # Versions we wrote in this pass before `body`: the index showing one of them lags.
    superseded: list[str] = field(default_factory=list)
    # A status change held back (progress, see `jobs.plan.progress_only`) or a creation
    # backing off: the pass runs again after this long at the latest.
    wait: float | None = None

    @property
    def phase(self) -> str:
        return self.plan.status.phase.value

    @property
    def requeue_after(self) -> float | None:
        times = [t for t in (self.plan.requeue_after, self.wait) if t is not None]
        return min(times) if times else None

    @property
    def workers(self) -> dict[str, int]:
        plan = self.plan
        # A finished, suspended or invalid job wants no workers.
        desired = plan.spec.workers.replicas if plan.ensure_children and plan.spec else 0
        return {"desired": desired, "ready": plan.status.ready_replicas, "pending": self.pending}

    @property
    def conditions(self) -> dict[str, bool]:
        return {c.type: c.status == "True" for c in self.plan.status.conditions}


# What a restart decides, written before any pod is touched (see `Reconciler.reconcile`).
INTENT_FIELDS = (
    "restartGeneration",
    "restarts",
    "lastFailure",
    "excludedNodes",
    "replacedPods",
    "inPlaceGeneration",
)


def intent_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch of the intent fields alone; empty when the pass decided no restart."""
    return status_patch(old, new, INTENT_FIELDS)


def restarts(plan: Plan) -> bool:
    decision = plan.failover.decision if plan.failover is not None else None
    return decision is not None and decision.verdict == Verdict.RESTART


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


@dataclass
class Creation:
    """What the API server said to this pass's pod creations."""

    created: list[int] = field(default_factory=list)
    rejected: str | None = None  # 400/422: the template cannot be a pod (InvalidSpec)
    refused: list[str] = field(default_factory=list)  # 403s (quota): may pass, back off
    attempted: int = 0


@dataclass
class _Refusal:
    attempts: int
    retry_at: datetime


class Reconciler:
    def __init__(
        self,
        clients: kube.Clients,
        *,
        pod_concurrency: int = 32,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        gaudi: GaudiSettings = DEFAULTS,
        scale_out_nodes: ScaleOutNodes | None = None,
        expectations: Expectations | None = None,
        status_debounce_seconds: float = 0.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clients = clients
        self.gaudi = gaudi
        # Fed by the node watch (jobs.wiring); without one the gate's state is unknown.
        self.scale_out_nodes = scale_out_nodes or ScaleOutNodes(None)
        self.status = StatusWriter(clients)
        self.expectations = expectations if expectations is not None else Expectations()
        # One bound for the whole operator: a 1000-worker job must not open 1000 requests.
        self._pod_slots = asyncio.Semaphore(pod_concurrency)
        self._clock = clock
        self._monotonic = monotonic
        self.debounce = status_debounce_seconds
        self._gang_warned: set[Key] = set()
        # Children this process created (or found), by job and job uid: never POSTed again
        # while the job lives, whatever the indices show meanwhile.
        self._services: dict[Key, str] = {}
        self._pod_groups: dict[Key, str] = {}
        self._refusals: dict[Key, _Refusal] = {}
        self._spare_refusals: dict[Key, _Refusal] = {}
        self._held: dict[Key, float] = {}  # a progress-only status change waiting since
        # failurePolicy.restartInPlace: the launchers' statuses, and each job's control
        # token by job uid (read from or written to the job's Secret once per process).
        self.launchers = LauncherWatch()
        self._tokens: dict[Key, tuple[str, str]] = {}
        metrics.track_cache("gang_warned", lambda: len(self._gang_warned))
        metrics.track_cache("services_created", lambda: len(self._services))
        metrics.track_cache("pod_groups_created", lambda: len(self._pod_groups))
        metrics.track_cache("create_refusals", lambda: len(self._refusals))
        metrics.track_cache("status_held", lambda: len(self._held))

    def forget(self, key: Key) -> None:
        """The job is gone: what the operator remembers of it goes too."""
        memories = (self._services, self._pod_groups, self._refusals, self._spare_refusals)
        for memory in (*memories, self._held):
            memory.pop(key, None)
        self._tokens.pop(key, None)
        self.launchers.forget(key)
        self._gang_warned.discard(key)
        self.expectations.forget(key)
        RECORDER.forget(key)
        DISRUPTIONS.handled(*key)

    async def reconcile(
        self, body: Mapping[str, Any], observed: Iterable[WorkerPod], service_exists: bool
    ) -> Result:
        job = JobView.from_body(body)
        key = (job.namespace, job.name)
        obs = observe(job, observed, self._clock())  # parsed once, here at the edge
        obs = replace(obs, signals=await signals_for(obs))  # nodes, HPU health, vanished pods
        obs = replace(obs, scale_out=self.scale_out_nodes.view())
        obs = await self._hear_launchers(key, job, obs)
        plan = job_plan.decide(obs)
        now = obs.now
        if job.deleting:
            return Result(plan)
        if plan.delete_job:
            await self._delete_job(job)
            await self._post(body, plan.events)
            return Result(plan)
        backoff = self._hold_refused(key, plan, now)

        # Commit before act: a restart's intent (count, generation, failure, excluded nodes,
        # the pods it replaces) is written first, guarded by the version this pass decided
        # from. A crash after this line converges on restart and counts nothing twice; a
        # conflict means the view was stale, and nothing was done (RetrySoon).
        read: Mapping[str, Any] = body
        written: dict[str, Any] | None = None
        new = plan.status.to_dict()
        if restarts(plan) and intent_patch(body.get("status") or {}, new):
            written = await self.status.commit(body, new, INTENT_FIELDS)
            read = written
            failpoints.hit("after-restart-intent")
        # In place: the launchers act on what is committed, at once (the pods stay).
        undelivered = await self._deliver(key, obs, plan) if written is not None else None

        decided = list(plan.events)  # told once the status write that decides them is done
        done: list[Event] = []  # told once done, whatever becomes of the status write
        if plan.spec is not None and plan.ensure_children:
            ref = manifests.JobRef(job.name, job.namespace, job.uid)
            await self._ensure_service(job, plan.spec, ref, service_exists)
            await self._ensure_pod_group(job, plan.spec, ref, done)
            # New pods find the world's store where a former spare at index 0 hosts it.
            gen = plan.status.restart_generation
            world = spares.holders(job.name, (p for p in obs.pods if not p.spare), gen)
            rdzv = spares.rendezvous(job.name, world.values())
            creation = await self._create_workers(job, plan, ref, done, rdzv)
            if creation.attempted:
                backoff = self._after_creation(key, plan, creation, job.generation, now, decided)
            await self._promote_spares(job, plan, done)
            await self._create_spares(job, plan, ref, done, rdzv)
        await self._delete_workers(job, plan, done)
        if any(e.reason == "InvalidSpec" for e in decided):
            metrics.INVALID_SPECS.inc()

        try:
            final, held = await self._write_status(key, read, plan, decided)
        except RetrySoon:
            # Nothing of this pass's own status was written: the next pass decides again,
            # its events with it. What was done is done, and a committed restart decided.
            await self._post(read, done)
            if written is not None:
                await self._post(read, decided)
                RECORDER.after_pass(job, plan, [*decided, *done], now)
            raise
        events = [*decided, *done]
        if undelivered is None:
            undelivered = await self._deliver(key, obs, plan)
        if plan.status.phase.finished or not _in_place(plan):
            self.launchers.forget(key)
        await self._post(final or read, events)
        RECORDER.after_pass(job, plan, events, now)  # failover metrics
        # Our intent commit is superseded by the status write: while the index shows it,
        # the index is behind us (see runtime.controller.Written).
        superseded = [_rv(written)] if written is not None and final is not None else []
        pending = sum(1 for p in obs.pods if p.phase == "Pending" and not p.deleting)
        retry = RETRY_DELIVERY_SECONDS if undelivered else None
        waits = [t for t in (held, backoff, retry) if t is not None]
        return Result(plan, final or written, pending, superseded, min(waits) if waits else None)

    # --- restart in place -----------------------------------------------------------------

    async def _hear_launchers(self, key: Key, job: JobView, obs: Any) -> Any:
        """The current world's launcher statuses into the observation (restartInPlace)."""
        spec = obs.spec
        if spec is None or not spec.failure_policy.restart_in_place or job.deleting:
            return obs
        if obs.status.phase.finished:
            return obs
        token = await self._control_token(job)
        # The world's launchers, and the spares' (whether each waits warm).
        polled = [p for p in obs.pods if p.spare or p.generation == obs.status.restart_generation]
        launchers = self.launchers.sync(key, token, polled)
        return replace(obs, launchers=launchers, unreachable=self.launchers.unreachable(key))

    async def _control_token(self, job: JobView) -> str:
        """The job's control token: read from its Secret, or created there (owned by the
        job, so it goes with it). Never logged."""
        key = (job.namespace, job.name)
        known = self._tokens.get(key)
        if known is not None and known[0] == job.uid:
            return known[1]
        name = api.control_secret_name(job.name)
        token = await self._read_token(job, name)
        if token is None:
            token = secrets.token_hex(32)
            ref = manifests.JobRef(job.name, job.namespace, job.uid)
            secret = manifests.control_secret_manifest(ref, token)
            try:
                await kube.create(self.clients, kube.core_path(job.namespace, "secrets"), secret)
            except Exception as err:
                if kube.status_code(err) != 409:
                    raise
                token = await self._read_token(job, name)  # another pass's, just created
                if token is None:
                    raise RetrySoon(f"the Secret {name} belongs to another job") from None
        self._tokens[key] = (job.uid, token)
        return token

    async def _read_token(self, job: JobView, name: str) -> str | None:
        try:
            secret = await self.clients.get(kube.core_path(job.namespace, "secrets", name))
        except Exception as err:
            if kube.status_code(err) == 404:
                return None
            raise
        meta = secret.get("metadata") or {}
        owners = [r.get("uid") for r in meta.get("ownerReferences") or [] if r.get("controller")]
        data = (secret.get("data") or {}).get(api.CONTROL_TOKEN_KEY)
        if owners != [job.uid] or not data:
            # A predecessor's (same job name, another uid): never reuse its token.
            await self.clients.delete(
                kube.core_path(job.namespace, "secrets", name),
                body={"preconditions": {"uid": meta.get("uid")}},
            )
            return None
        return base64.b64decode(data).decode()

    async def _deliver(self, key: Key, obs: Any, plan: Plan) -> list[str]:
        """Post the in-place decision the status now records to the launchers that have
        not taken it; the ones not reached are told again by the next pass."""
        fo = plan.failover
        if fo is None or fo.deliver is None or not fo.deliver_to:
            return []
        pods = {p.name: p for p in obs.pods}
        decision = fo.deliver
        if decision.action == RESTART_ACTION:
            # Each launcher is told its index (a spare needs it to join) and, when a spare
            # holds index 0, where that spare hosts the world's store.
            gen = plan.status.restart_generation
            world = spares.holders(key[1], (p for p in obs.pods if not p.spare), gen)
            rdzv = spares.rendezvous(key[1], world.values()) or decision.rendezvous
            decisions = {
                n: replace(decision, worker_index=pods[n].index, rendezvous=rdzv)
                if n in pods
                else decision
                for n in fo.deliver_to
            }
        else:
            decisions = dict.fromkeys(fo.deliver_to, decision)
        return await self.launchers.deliver(key, pods, decisions)

    # --- children -----------------------------------------------------------------------

    async def _create(self, job: JobView, manifest: dict[str, Any]) -> None:
        try:
            if manifest["kind"] == "Service":
                path = kube.core_path(job.namespace, "services")
                await kube.create(self.clients, path, manifest)
            else:
                group, version = manifest["apiVersion"].split("/")
                path = kube.custom_path(group, version, job.namespace, "podgroups")
                await kube.create(self.clients, path, manifest)
        except Exception as err:
            if kube.status_code(err) != 409:
                raise

    async def _ensure_service(
        self,
        job: JobView,
        spec: GaudiTrainingJobSpec,
        ref: manifests.JobRef,
        service_exists: bool,
    ) -> None:
        """The headless Service, only for a job that can ever have a second worker (one
        worker reaches itself at its own IP: `manifests.needs_service`)."""
        key = (job.namespace, job.name)
        if (
            service_exists
            or not manifests.needs_service(spec)
            or self._services.get(key) == job.uid
        ):
            return
        await self._create(job, manifests.service_manifest(ref))
        self._services[key] = job.uid

    async def _ensure_pod_group(
        self, job: JobView, spec: GaudiTrainingJobSpec, ref: manifests.JobRef, events: list[Event]
    ) -> None:
        """The gang scheduler's PodGroup, created only when missing: looked up once per job
        (and operator process), never POSTed on every pass."""
        manifest = manifests.pod_group_manifest(spec, ref)
        key = (job.namespace, job.name)
        if manifest is None or self._pod_groups.get(key) == job.uid or key in self._gang_warned:
            return
        group, version = manifest["apiVersion"].split("/")
        try:
            name = manifest["metadata"]["name"]
            await self.clients.get(
                kube.custom_path(group, version, job.namespace, "podgroups", name)
            )
            self._pod_groups[key] = job.uid
            return
        except Exception as err:
            if kube.status_code(err) != 404:
                raise
        try:
            await self._create(job, manifest)
            self._pod_groups[key] = job.uid
        except Exception as err:
            if kube.status_code(err) != 404:
                raise
            # The gang scheduler's CRD is not installed: run without it, say so once.
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
        self,
        job: JobView,
        plan: Plan,
        ref: manifests.JobRef,
        events: list[Event],
        rendezvous: str | None = None,
    ) -> Creation:
        """Create the missing workers concurrently. Expectations first: the watch can show
        a new pod before its POST returns."""
        out = Creation(attempted=len(plan.create))
        if not plan.create or plan.spec is None:
            return out
        spec, status = plan.spec, plan.status
        key = (job.namespace, job.name)
        excluded = status.excluded_nodes if spec.failure_policy.exclude_failed_nodes else []
        gen = status.restart_generation
        pods_path = kube.core_path(job.namespace, "pods")
        names = {i: api.worker_pod_name(job.name, i) for i in plan.create}
        self.expectations.expect(key, creations=names.values())

        async def create(index: int) -> str:
            manifest = manifests.worker_pod_manifest(
                spec,
                ref,
                index,
                gen,
                excluded,
                self.gaudi,
                status.in_place_generation,
                rendezvous,
            )
            return await self._post_pod(key, pods_path, names[index], manifest)

        results = await asyncio.gather(*(create(i) for i in plan.create), return_exceptions=True)
        out.created = [i for i, r in zip(plan.create, results, strict=True) if r == "created"]
        if out.created:
            metrics.PODS_CREATED.inc(len(out.created))
            events.append(
                Event(
                    "Normal",
                    "CreatedWorkers",
                    f"created {len(out.created)} worker pods "
                    f"(indices {summarize_indices(out.created)}, generation {gen})",
                )
            )
        said = [r for r in results if isinstance(r, str)]
        out.refused = [r.removeprefix("refused:") for r in said if r.startswith("refused:")]
        out.rejected = next(
            (r.removeprefix("rejected:") for r in said if r.startswith("rejected:")), None
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors and not out.rejected:
            raise errors[0]
        return out

    async def _promote_spares(self, job: JobView, plan: Plan, events: list[Event]) -> None:
        """Warm spares take the world indices failover wrote off: one label patch each
        (`manifests.promotion_patch`), expected back from the pod watch before the next
        pass, which re-forms the world with them (`failover.inplace`)."""
        if not plan.promote:
            return
        key = (job.namespace, job.name)
        gen = plan.status.restart_generation
        self.expectations.expect(key, relabels={s.name: i for s, i in plan.promote})

        async def promote(spare: WorkerPod, index: int) -> bool:
            body = manifests.promotion_patch(index, gen)
            # The uid in the patch is a precondition: the API server refuses (the uid is
            # immutable) if the pod under this name is not the spare we looked at.
            body["metadata"]["uid"] = spare.uid
            path = f"{kube.core_path(job.namespace, 'pods')}/{spare.name}"
            try:
                async with self._pod_slots:
                    await kube.merge_patch_object(self.clients, path, body)
            except BaseException as err:
                self.expectations.relabeled(key, spare.name)  # never to be seen
                if kube.status_code(err) in (404, 409, 422):
                    return False  # gone, or another pod now: the next pass looks again
                raise
            return True

        results = await asyncio.gather(
            *(promote(s, i) for s, i in plan.promote), return_exceptions=True
        )
        for (spare, index), ok in zip(plan.promote, results, strict=True):
            if ok is True:
                metrics.SPARES_PROMOTED.inc()
                events.append(
                    Event(
                        "Normal",
                        "SpareTookOver",
                        f"warm spare {spare.name} (node {spare.node}) took the place of "
                        f"worker {index}",
                    )
                )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]

    async def _create_spares(
        self,
        job: JobView,
        plan: Plan,
        ref: manifests.JobRef,
        events: list[Event],
        rendezvous: str | None = None,
    ) -> None:
        """Start the spares the pool lacks (`jobs.spares`). A refusal (a namespace quota)
        is said once in a Warning event and retried with backoff; it never holds workers."""
        if not plan.create_spares or plan.spec is None:
            return
        key = (job.namespace, job.name)
        now = self._clock()
        refusal = self._spare_refusals.get(key)
        if refusal is not None and now < refusal.retry_at:
            return
        spec, status = plan.spec, plan.status
        excluded = status.excluded_nodes if spec.failure_policy.exclude_failed_nodes else []
        names = {n: api.spare_pod_name(job.name, n) for n in plan.create_spares}
        self.expectations.expect(key, creations=names.values())
        pods_path = kube.core_path(job.namespace, "pods")

        async def create(number: int) -> str | None:
            manifest = manifests.spare_pod_manifest(
                spec,
                ref,
                number,
                status.restart_generation,
                excluded,
                self.gaudi,
                status.in_place_generation,
                rendezvous,
            )
            said = await self._post_pod(key, pods_path, names[number], manifest)
            return said.partition(":")[2] if said.startswith(("rejected:", "refused:")) else None

        results = await asyncio.gather(
            *(create(n) for n in plan.create_spares), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, str)]
        if refused:
            self._spare_refusals[key] = _next_refusal(refusal, now)
            if refusal is None:
                events.append(
                    Event(
                        "Warning",
                        "SparesRefused",
                        f"{len(refused)} of {len(results)} spare pods were refused by the API "
                        f"server; retrying with backoff (workers are not affected): {refused[0]}",
                    )
                )
        elif not errors:
            self._spare_refusals.pop(key, None)
        if errors:
            raise errors[0]

    async def _post_pod(self, key: Key, path: str, name: str, manifest: Mapping[str, Any]) -> str:
        """POST one pod (a worker or a spare): "created", "exists" (an earlier pass's, the
        watch will show it), "rejected:<message>" (400/422: the spec cannot be a pod,
        InvalidSpec, no retry) or "refused:<message>" (403, a quota: may pass, back off);
        anything else raises. A pod that will never be seen is taken off the expectations."""
        try:
            async with self._pod_slots:
                await kube.create(self.clients, path, manifest)
        except BaseException as err:
            code = kube.status_code(err)
            if code == 409:
                return "exists"
            self.expectations.created(key, name)  # never to be seen
            # 400: it cannot even be decoded (a quantity the CRD took as a string).
            if code in (400, 422):
                return "rejected:" + kube.api_message(err)
            if code == 403 and not kube.namespace_terminating(err):
                return "refused:" + kube.api_message(err)
            raise
        return "created"

    def _hold_refused(self, key: Key, plan: Plan, now: datetime) -> float | None:
        """While a refused creation backs off, passes create nothing; seconds left."""
        refusal = self._refusals.get(key)
        if refusal is None or not plan.create:
            return None
        left = (refusal.retry_at - now).total_seconds()
        if left <= 0:
            return None
        plan.create = []
        return left

    def _after_creation(
        self,
        key: Key,
        plan: Plan,
        creation: Creation,
        generation: int,
        now: datetime,
        events: list[Event],
    ) -> float | None:
        """Conditions, events and backoff for what the API server refused."""
        if creation.rejected:
            _mark_rejected(plan, creation.rejected, generation, now, events)
        if not creation.refused:
            if not creation.rejected:
                self._refusals.pop(key, None)  # all created: the refusal is over
            return None
        self._refusals[key] = _next_refusal(self._refusals.get(key), now)
        _mark_refused(plan, creation, generation, now, events)
        return (self._refusals[key].retry_at - now).total_seconds()

    async def _delete_workers(self, job: JobView, plan: Plan, events: list[Event]) -> None:
        if not plan.delete:
            return
        key = (job.namespace, job.name)
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
            try:
                async with self._pod_slots:
                    await self.clients.delete(
                        kube.core_path(job.namespace, "pods", pod.name), body=options
                    )
            except BaseException as err:
                if kube.status_code(err) != 409:
                    # Gone already (404) or never deleted: no event of its going will come.
                    # A 409 is another pod under the name now: this one's DELETED will.
                    self.expectations.deleted(key, pod.uid)
                if kube.status_code(err) in (404, 409):
                    return False
                raise
            return True

        # Our own deletions are not disruptions (failover watches for deleted workers).
        DISRUPTIONS.deleting(p.uid for p in plan.delete)
        self.expectations.expect(key, deletions=(p.uid for p in plan.delete))
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
            await self.clients.delete(
                kube.custom_path(api.GROUP, api.VERSION, job.namespace, api.PLURAL, job.name),
                body={"preconditions": {"uid": job.uid}},
                params={"propagationPolicy": "Background"},
            )
        except Exception as err:
            if kube.status_code(err) not in (404, 409):
                raise

    # --- status and events --------------------------------------------------------------

    async def _post(self, body: Mapping[str, Any], events: Iterable[Event]) -> None:
        for e in events:
            log.info("%s/%s: %s %s", _ns(body), _name(body), e.reason, e.message)
            await post_event(self.clients, body, e.type, e.reason, e.message)

    async def _write_status(
        self, key: Key, read: Mapping[str, Any], plan: Plan, decided: list[Event]
    ) -> tuple[dict[str, Any] | None, float | None]:
        """Write this pass's status through the one status writer, guarded by the version
        it decided from (`read`); a conflict with our own part changed is `RetrySoon`.

        Workers' progress alone (`jobs.plan.progress_only`), with nothing decided, waits up
        to `debounce` seconds (5 s while a worker cannot be placed) for the next change to go
        out with: returns (None, seconds left) while it waits. A job's first status waits
        5 s at most (`jobs.plan.first_progress`). The trade-off: `kubectl get` may show no
        phase for up to 5 s after the pods are created, and Pending for longer while pods
        already start (image pulls); a job whose workers run within 5 s costs one status
        write to Running, any other at most two, even on a loaded API server.
        """
        old = read.get("status") or {}
        new = plan.status.to_dict()
        if not status_patch(old, new):
            self._held.pop(key, None)
            return None, None
        first = job_plan.first_progress(old, new)
        if self.debounce > 0 and not decided and (first or job_plan.progress_only(old, new)):
            hold = self.debounce
            if first:
                hold = min(hold, FIRST_STATUS_HOLD_SECONDS)
            if job_plan.waiting_for_placement(new):
                hold = min(hold, UNPLACED_DEBOUNCE_SECONDS)
            since = self._held.setdefault(key, self._monotonic())
            left = hold - (self._monotonic() - since)
            if left > 0:
                return None, left
        self._held.pop(key, None)
        return await self.status.write(read, new), None


def _next_refusal(last: _Refusal | None, now: datetime) -> _Refusal:
    """One more refusal: retried after 5 s, doubling up to the cap."""
    attempts = last.attempts + 1 if last is not None else 1
    delay = min(REFUSAL_BACKOFF_MAX_SECONDS, REFUSAL_BACKOFF_SECONDS * 2 ** (attempts - 1))
    return _Refusal(attempts, now + timedelta(seconds=delay))


def _mark_refused(
    plan: Plan, creation: Creation, generation: int, now: datetime, events: list[Event]
) -> None:
    """Workers refused by a namespace quota (or another 403 that may pass): Created=False
    with the API server's words, and one Warning event when it starts. Retried passes
    that are refused again change nothing: no new event, no status write."""
    message = creation.refused[0]
    reason = job_plan.QUOTA_EXCEEDED if "exceeded quota" in message else job_plan.CREATE_FORBIDDEN
    old = api.get_condition(plan.status.conditions, ConditionType.CREATED)
    if old is not None and old.status == "False" and old.reason == reason:
        return
    text = (
        f"{len(creation.refused)} of {creation.attempted} worker pods were refused by the API "
        f"server; retrying with backoff: {message}"
    )
    plan.status.conditions = api.set_condition(
        plan.status.conditions, ConditionType.CREATED, False, reason, text, now, generation
    )
    events.append(Event("Warning", reason, text))


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


def _in_place(plan: Plan) -> bool:
    return plan.spec is not None and plan.spec.failure_policy.restart_in_place


def _name(body: Mapping[str, Any]) -> str:
    return str((body.get("metadata") or {}).get("name"))


def _ns(body: Mapping[str, Any]) -> str:
    return str((body.get("metadata") or {}).get("namespace"))


def _rv(body: Mapping[str, Any]) -> str:
    return str((body.get("metadata") or {}).get("resourceVersion") or "")
