"""What a job should look like now: one pure, level-based decision per pass.

`plan()` takes the job object and its observed worker pods and returns the status to
write, the worker indices to create, the pods to delete and the events to post. It knows
nothing of the API server, so the same pass is right after a restart, a missed event or a
duplicate one. The order of decisions, first match wins:

1. spec unusable          -> InvalidSpec condition + event, nothing touched
2. already finished       -> cleanPodPolicy, then ttlSecondsAfterFinished deletes the job
3. suspend: true, or      -> delete every worker, phase Suspended (resume recreates them)
   held by Kueue             (`queueing.policy.suspension`: queued and not admitted)
4. activeDeadlineSeconds  -> Failed (DeadlineExceeded)
5. success policy met     -> Succeeded
6. a worker failed        -> `failover.step`: failurePolicy rules, restart strategy, backoff,
                             maxRestarts, excluded nodes (see failover.py)
7. otherwise              -> create missing `<job>-worker-<i>`, delete surplus (other
                             generation, index >= replicas; highest index first)

Every pass then writes the kstatus conditions GitOps tools read (see `_kstatus_conditions`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gaudi_operator import api
from gaudi_operator.api import (
    CleanPodPolicy,
    Condition,
    ConditionType,
    GaudiTrainingJobSpec,
    GaudiTrainingJobStatus,
    Phase,
    SuccessPolicy,
    clear_condition,
    get_condition,
    set_condition,
)
from gaudi_operator.failover import inplace
from gaudi_operator.failover import policy as failover
from gaudi_operator.jobs import gaudi, spares
from gaudi_operator.jobs.observation import JobView, Observation, WorkerPod, observe
from gaudi_operator.queueing import policy as queueing

POD_REJECTED = "PodRejected"  # InvalidSpec reason when the API server refused a worker pod
FOREIGN_WORKERS = "ForeignWorkers"  # Warning event: ownerless pods with a worker's name
# Created=False reasons when the API server refused to create workers for a reason that
# may pass (a namespace ResourceQuota, a LimitRange): the reconciler retries with backoff.
QUOTA_EXCEEDED = "QuotaExceeded"
CREATE_FORBIDDEN = "CreateForbidden"
REFUSED_REASONS = (QUOTA_EXCEEDED, CREATE_FORBIDDEN)

# kstatus conditions (sigs.k8s.io/cli-utils, what Flux's health checks compute from):
# Reconciling True while the job converges, Stalled True while it cannot go on without a
# change by someone. Both are abnormal-true: written once True, set False afterwards.
RECONCILING = "Reconciling"
STALLED = "Stalled"
_CONVERGING = (Phase.PENDING, Phase.STARTING, Phase.RESTARTING, Phase.SCALING)
# The longest a pass asks to come back after, for a deadline or a TTL far ahead.
REQUEUE_CAP_SECONDS = 86400.0


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Plan:
    status: GaudiTrainingJobStatus
    spec: GaudiTrainingJobSpec | None = None
    create: list[int] = field(default_factory=list)
    delete: list[WorkerPod] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    delete_job: bool = False
    requeue_after: float | None = None
    # Children (Service, PodGroup) are wanted while the job may still run workers.
    ensure_children: bool = False
    # Failover: pods to delete without grace (their node is dead), and what it decided.
    force_delete: list[str] = field(default_factory=list)
    failover: failover.Outcome | None = None
    # Warm spares (spec.workers.spares): spares that take a lost worker's index now, and
    # the numbers of spares to start (`api.spare_pod_name`).
    promote: list[tuple[WorkerPod, int]] = field(default_factory=list)
    create_spares: list[int] = field(default_factory=list)


# --- the pass ---------------------------------------------------------------------------


def plan(
    job: JobView,
    pods: Iterable[WorkerPod],
    now: datetime,
    signals: failover.Signals | None = None,
) -> Plan:
    """Observe, then decide: the whole pass for a job view and its pods."""
    return decide(observe(job, pods, now, signals))


def decide(obs: Observation) -> Plan:
    out = _decide(obs)
    if not obs.job.deleting:
        _kstatus_conditions(out.status, obs.job.generation, obs.now)
        _replace_foreign(out, obs)
        _hold_rejected(out, obs.job.generation)
    return out


def _hold_rejected(out: Plan, generation: int) -> None:
    """Workers the API server rejected (422, 400) for this spec are not POSTed again on
    every resync: the same spec builds the same pod. The next spec clears PodRejected."""
    cond = get_condition(out.status.conditions, ConditionType.INVALID_SPEC)
    if (
        cond is not None
        and cond.status == "True"
        and cond.reason == POD_REJECTED
        and cond.observed_generation == generation
    ):
        out.create = []


def _replace_foreign(out: Plan, obs: Observation) -> None:
    """Pods named like this job's workers that it does not control are never its own: a
    predecessor's (same job name, another uid) or ownerless ones (`kubectl delete
    --cascade=orphan` leaves its workers without an owner). They are not counted, never
    adopted, and deleted (uid preconditions) so that a worker is created once its name is
    free again: kept, they would hold the names and answer the rendezvous DNS name."""
    if not obs.foreign:
        return
    taken = {p.name for p in obs.foreign}
    out.create = [i for i in out.create if api.worker_pod_name(obs.job.name, i) not in taken]
    going = [p for p in obs.foreign if not p.deleting and p not in out.delete]
    out.delete += going
    orphans = sorted(p.name for p in going if not p.owner_uid)
    if orphans:
        out.events.append(
            Event(
                "Warning",
                FOREIGN_WORKERS,
                f"deleting {len(orphans)} pods named as this job's workers that no job owns "
                f"({', '.join(orphans)}; left by `kubectl delete --cascade=orphan`?): never "
                f"adopted, their names are needed for this job's workers",
            )
        )


def _decide(obs: Observation) -> Plan:
    job, now, signals = obs.job, obs.now, obs.signals
    pods = list(obs.pods)
    status = obs.status.model_copy(deep=True)
    before = obs.status.model_copy(deep=True)
    status.selector = api.job_selector(job.name)
    status.observed_generation = job.generation
    if job.deleting:
        # Garbage collection removes the children through their owner references.
        return Plan(status=before)
    spec = obs.spec
    if spec is None:
        return _invalid(job, status, before, pods, obs.spec_error or "spec is invalid", now)

    status.conditions = _settle_invalid_spec(status, job.generation, now)
    if status.phase.finished:
        return _finished(job, spec, status, before, pods, now)
    held = queueing.suspension(spec, status)
    if held is not None:
        return _suspended(job, spec, status, before, pods, now, held)
    out = Plan(status=status, spec=spec, ensure_children=True)
    if before.phase == Phase.SUSPENDED:
        out.events.append(Event("Normal", "Resumed", "job resumed: recreating workers"))
        status.conditions = set_condition(
            status.conditions,
            ConditionType.SUSPENDED,
            False,
            "Resumed",
            "job resumed",
            now,
            job.generation,
        )

    # 4. deadline, counted from startTime (reset by suspend, as for a Kubernetes Job)
    deadline = spec.run_policy.active_deadline_seconds
    start = api.parse_rfc3339(status.start_time)
    if deadline is not None and start is not None:
        # In seconds, not as a datetime: the CRD admits any int64, and start + a deadline of
        # 3e18 s overflows a datetime (the spec fuzz found it). The pass comes back within
        # a day at the latest; a resync would anyway.
        left = deadline - (now - start).total_seconds()
        if left <= 0:
            msg = f"job was active longer than spec.runPolicy.activeDeadlineSeconds ({deadline}s)"
            return _finish(
                job, spec, status, before, pods, now, Phase.FAILED, "DeadlineExceeded", msg
            )
        out.requeue_after = min(left, REQUEUE_CAP_SECONDS)

    gen = status.restart_generation
    desired = spec.workers.replicas
    workers = [p for p in pods if not p.spare]
    current = spares.holders(job.name, workers, gen)
    in_world = {i: p for i, p in current.items() if i < desired}

    # 5. success
    if _succeeded(spec, in_world, desired):
        who = "worker 0" if spec.run_policy.success_policy == SuccessPolicy.RANK0 else "all workers"
        msg = f"{who} exited 0"
        return _finish(job, spec, status, before, pods, now, Phase.SUCCEEDED, "Succeeded", msg)

    # 6. failure: failurePolicy (failover.py decides and records; this applies it)
    ready = get_condition(status.conditions, ConditionType.READY)
    ready_since = (
        api.parse_rfc3339(ready.last_transition_time)
        if before.phase == Phase.RUNNING and ready is not None and ready.status == "True"
        else None
    )
    world = sorted(in_world.values(), key=lambda p: p.index or 0)
    # Gang scheduling places the whole world or none of it: nothing to release then.
    placement = 0 if spec.scheduling.gang else spec.failure_policy.placement_timeout_seconds
    in_place = spec.failure_policy.restart_in_place
    spare_pods = [p for p in pods if p.spare]
    warm = [
        s for s in spare_pods if spares.warm(s, obs.launchers.get(s.name), status.excluded_nodes)
    ]
    fo = failover.step(
        spec.failure_policy,
        status,
        world,
        desired,
        now,
        signals,
        ready_since,
        placement,
        warm_spares=len(warm) if in_place else 0,
    )
    if (
        spec.failure_policy.restart_in_place
        and fo.decision.verdict == failover.Verdict.NONE
        and not fo.restarting
    ):
        # Every pod, node and HPU is healthy: a failed process is restarted in its pod.
        fo = inplace.step(
            spec.failure_policy,
            status,
            world,
            replicas=desired,
            launchers=obs.launchers,
            now=now,
            unreachable=obs.unreachable,
        )
    out.failover = fo
    out.events += [Event(*e) for e in fo.events]
    if fo.condition is not None:
        status.conditions = set_condition(
            status.conditions, ConditionType.RESTARTING, *fo.condition, now, job.generation
        )
    if fo.fail is not None:
        done = _finish(job, spec, status, before, pods, now, Phase.FAILED, *fo.fail)
        done.failover, done.force_delete = fo, fo.force_delete
        return done
    if fo.requeue_after is not None:
        out.requeue_after = min(out.requeue_after or fo.requeue_after, fo.requeue_after)
    recreate_all = status.restart_generation != gen
    if recreate_all:  # RecreateAll: the whole world is now surplus
        gen = status.restart_generation
        current, in_world = {}, {}

    # 7. converge children
    names = {p.name for p in pods}
    out.create = [
        i
        for i in range(desired)
        if i not in current and api.worker_pod_name(job.name, i) not in names
    ]
    holding = set(current.values())
    surplus = [
        p
        for p in workers
        if not p.deleting
        and (p.generation != gen or p.index is None or p.index >= desired or p not in holding)
    ]
    if fo.hold_create:
        out.create = []
    written_off = set(fo.delete) | set(fo.force_delete)
    surplus += [p for p in pods if p.name in written_off and p not in surplus]
    # A pod already going (deleted with grace) whose node died will never finish going: its
    # kubelet cannot confirm. Deleted again without grace, or its name (a worker's, needed
    # for the new generation) stays taken for ever.
    grace = spec.failure_policy.node_failure_grace_seconds
    stranded = [p for p in pods if p.deleting and _node_lost(signals, p.node, grace, now)]
    surplus += [p for p in stranded if p not in surplus]
    written_off |= {p.name for p in stranded}
    idle = _warm_spares(out, obs, spec, spare_pods, in_world, written_off, fo, recreate_all)
    out.delete = sorted(surplus, key=lambda p: -(p.index if p.index is not None else 1 << 30))
    out.force_delete = sorted({*fo.force_delete, *(p.name for p in stranded)})
    if (out.create or in_world) and status.start_time is None:
        status.start_time = api.to_rfc3339(now)
    _count(status, spec, pods, in_world, desired)
    status.phase = _running_phase(before.phase, workers, gen, in_world, desired, bool(out.delete))
    out.delete += [p for p in idle if p not in out.delete]  # spares: never a world's surplus
    # An in-place restart is over when the launchers say so, not when the pods run (they
    # never stopped): `inplace.step` decides its condition itself.
    in_place_pending = fo.in_place and fo.restarting
    settled = (
        None if in_place_pending else failover.settle(status, pods, status.phase == Phase.RUNNING)
    )
    if settled is not None:
        old = get_condition(status.conditions, ConditionType.RESTARTING)
        if settled[1] == failover.NO_FEASIBLE_NODE and (old is None or old.reason != settled[1]):
            out.events.append(Event("Warning", settled[1], settled[2]))
        status.conditions = set_condition(
            status.conditions, ConditionType.RESTARTING, *settled, now, job.generation
        )
        if not settled[0]:
            status.replaced_pods = None  # the restart is over: its record goes
    restarting = get_condition(status.conditions, ConditionType.RESTARTING)
    if restarting is not None and restarting.status == "True":
        status.phase = Phase.RESTARTING  # until the whole world runs again
    _running_conditions(status, job.generation, desired, now)
    scale_out = obs.scale_out if gaudi.needs_scale_out(spec) else None
    world_pods = [p for p in workers if p.generation == gen]
    _scheduled_condition(status, world_pods, job.generation, now, scale_out)
    # No event for reaching Running: phase and Ready say it (with the time), and a job's
    # way to Running posts one Normal event only, CreatedWorkers (docs/architecture.md).
    return out


def _node_lost(
    signals: failover.Signals | None, node: str | None, grace: int, now: datetime
) -> bool:
    """The node is gone, or NotReady past the job's grace (`failover.node_failure`)."""
    health = signals.nodes.get(node) if signals is not None and node else None
    if health is None:
        return False
    found = failover.node_failure(health, now, grace)
    return isinstance(found, tuple) and found[0] == api.FailureReason.NODE_LOST


def _warm_spares(
    out: Plan,
    obs: Observation,
    spec: GaudiTrainingJobSpec,
    spare_pods: list[WorkerPod],
    in_world: dict[int, WorkerPod],
    written_off: set[str],
    fo: failover.Outcome,
    recreate_all: bool,
) -> list[WorkerPod]:
    """spec.workers.spares: a warm spare takes each world index failover just wrote off
    (or that has no pod), instead of a new pod; the pool is refilled once the world's
    workers all have nodes. Returns the spares to delete (failed, excess, on an excluded
    node). Not while a restart backs off, nor for a RecreateAll (a new world)."""
    if not spec.workers.spares and not spare_pods:
        return []
    desired = spec.workers.replicas
    live = {i for i, p in in_world.items() if p.live and p.name not in written_off}
    vacant = [] if fo.hold_create or recreate_all else [i for i in range(desired) if i not in live]
    placed = len(live) == desired and all(in_world[i].node for i in live)
    chosen = spares.plan_spares(
        obs.job.name,
        spec.workers.spares,
        spare_pods,
        vacant,
        obs.launchers,
        out.status.excluded_nodes,
        placed,
        (p.name for p in (*obs.pods, *obs.foreign)),
    )
    out.promote, out.create_spares = chosen.promote, chosen.create
    taken = {i for _, i in chosen.promote}
    out.create = [i for i in out.create if i not in taken]
    if chosen.promote:
        _say_spares_take_over(out, obs, spec, fo, chosen.promote)
    return chosen.delete


def _say_spares_take_over(
    out: Plan,
    obs: Observation,
    spec: GaudiTrainingJobSpec,
    fo: failover.Outcome,
    promote: list[tuple[WorkerPod, int]],
) -> None:
    """The restart's condition and event say what happens: spares take the indices (the
    failover decision's own words say it recreates them)."""
    decision = fo.decision
    if decision.primary is None or decision.verdict != failover.Verdict.RESTART:
        return
    took = ", ".join(f"{s.name} takes worker {i}" for s, i in promote)
    limit = (
        f"restart {decision.restarts}/{spec.failure_policy.max_restarts}"
        if decision.counted
        else "not counted against maxRestarts"
    )
    message = f"{decision.primary.describe()}; warm spare {took}, no new pod ({limit})"
    out.status.conditions = set_condition(
        out.status.conditions,
        ConditionType.RESTARTING,
        True,
        decision.primary.reason.value,
        message,
        obs.now,
        obs.job.generation,
    )
    out.events = [
        Event(e.type, e.reason, message) if e.reason == "RestartingWorkers" else e
        for e in out.events
    ]


def _settle_invalid_spec(
    status: GaudiTrainingJobStatus, generation: int, now: datetime
) -> list[Condition]:
    cond = get_condition(status.conditions, ConditionType.INVALID_SPEC)
    if cond is None or cond.status != "True":
        return status.conditions
    # A worker pod the API server refused stays a problem until the spec changes.
    if cond.reason == POD_REJECTED and cond.observed_generation == generation:
        return status.conditions
    return set_condition(
        status.conditions, ConditionType.INVALID_SPEC, False, "SpecValid", "", now, generation
    )


def _invalid(
    job: JobView,
    status: GaudiTrainingJobStatus,
    before: GaudiTrainingJobStatus,
    pods: list[WorkerPod],
    message: str,
    now: datetime,
) -> Plan:
    old = get_condition(before.conditions, ConditionType.INVALID_SPEC)
    status.conditions = set_condition(
        status.conditions,
        ConditionType.INVALID_SPEC,
        True,
        "InvalidSpec",
        message,
        now,
        job.generation,
    )
    out = Plan(status=status)
    if old is None or old.status != "True" or old.message != message:
        out.events.append(Event("Warning", "InvalidSpec", message))
    return out


def _succeeded(spec: GaudiTrainingJobSpec, in_world: dict[int, WorkerPod], desired: int) -> bool:
    if spec.run_policy.success_policy == SuccessPolicy.RANK0:
        rank0 = in_world.get(0)
        return rank0 is not None and rank0.succeeded
    return len(in_world) == desired and all(p.succeeded for p in in_world.values())


def _count(
    status: GaudiTrainingJobStatus,
    spec: GaudiTrainingJobSpec,
    pods: list[WorkerPod],
    in_world: dict[int, WorkerPod],
    desired: int,
) -> None:
    alive = [p for p in in_world.values() if not p.deleting]
    status.replicas = len(alive)
    status.ready_replicas = sum(1 for p in alive if p.phase == "Running" and p.ready)
    status.workers = f"{status.ready_replicas}/{desired}"
    # HPUs stay allocated until a pod is gone or finished, whatever its generation.
    status.hpus = hpus_held(spec, pods)


def _running_phase(
    previous: Phase,
    pods: list[WorkerPod],
    gen: int,
    in_world: dict[int, WorkerPod],
    desired: int,
    has_surplus: bool,
) -> Phase:
    alive = [p for p in in_world.values() if not p.deleting]
    ready = sum(1 for p in alive if p.phase == "Running" and p.ready)
    if any(p.generation != gen for p in pods):
        return Phase.RESTARTING  # the previous generation is still draining
    if previous in (Phase.RUNNING, Phase.SCALING) and (len(alive) != desired or has_surplus):
        return Phase.SCALING
    if ready == desired:
        return Phase.RUNNING
    if len(alive) == desired and all(p.node for p in alive):
        return Phase.STARTING
    return Phase.PENDING


def hpus_held(spec: GaudiTrainingJobSpec, pods: Iterable[WorkerPod]) -> int:
    """HPUs the job holds: a worker bound to a node and not finished holds its cards,
    whatever its generation; a worker still waiting for a node holds none."""
    return spec.hpus_per_worker * sum(1 for p in pods if p.node and not p.terminal)


def unschedulable_reason(message: str, excluded_nodes: list[str]) -> str:
    """The condition reason for the scheduler's "cannot place" message (its first cause)."""
    if f"Insufficient {api.GAUDI_RESOURCE}" in message:
        return "InsufficientHPUs"
    if "untolerated taint" in message:
        return "UntoleratedTaints"
    if "node affinity/selector" in message:
        return "ExcludedNodes" if excluded_nodes else "NodeSelectorMismatch"
    return "Unschedulable"


def _scheduled_condition(
    status: GaudiTrainingJobStatus,
    world: list[WorkerPod],
    generation: int,
    now: datetime,
    scale_out: gaudi.ScaleOut | None = None,
) -> None:
    """Scheduled: whether every worker of the current world has a node, and if not, the
    scheduler's own reason (a job that cannot run says why instead of sitting Pending).
    A job held by the scale-out gate (`scale_out`, when its workers need a ready node)
    while no node is ready says that instead: no other fix would place it."""
    alive = [p for p in world if not p.deleting and not p.terminal]
    waiting = [p for p in alive if p.unschedulable]
    if waiting:
        said = waiting[0].unschedulable or ""
        reason = unschedulable_reason(said, status.excluded_nodes)
        why = f"{len(waiting)} of {len(alive)} workers cannot be placed"
        if scale_out is not None and scale_out.ready_nodes == 0:
            reason = gaudi.NO_SCALE_OUT_READY_NODE
            why += f": {gaudi.scale_out_message(scale_out.label)}"
        status.conditions = set_condition(
            status.conditions,
            ConditionType.SCHEDULED,
            False,
            reason,
            f"{why}; the scheduler says: {said}",
            now,
            generation,
        )
    elif alive and all(p.node for p in alive):
        status.conditions = set_condition(
            status.conditions,
            ConditionType.SCHEDULED,
            True,
            "AllWorkersScheduled",
            f"{len(alive)} workers have a node",
            now,
            generation,
        )


def _running_conditions(
    status: GaudiTrainingJobStatus, generation: int, desired: int, now: datetime
) -> None:
    conds = status.conditions
    created = status.replicas == desired
    refused = get_condition(conds, ConditionType.CREATED)
    if created or refused is None or refused.reason not in REFUSED_REASONS:
        # A refusal (quota) stays until every worker exists: the reconciler's backoff
        # retries, and the passes in between must not flip the condition back and forth.
        conds = set_condition(
            conds,
            ConditionType.CREATED,
            created,
            "WorkersCreated" if created else "CreatingWorkers",
            f"{status.replicas}/{desired} worker pods exist",
            now,
            generation,
        )
    ready = status.ready_replicas == desired
    conds = set_condition(
        conds,
        ConditionType.READY,
        ready,
        "AllWorkersReady" if ready else "WorkersNotReady",
        f"{status.ready_replicas}/{desired} workers ready",
        now,
        generation,
    )
    status.conditions = conds


def _stalled(status: GaudiTrainingJobStatus) -> tuple[str, str] | None:
    """(reason, message) when the job cannot progress until someone changes something."""
    invalid = get_condition(status.conditions, ConditionType.INVALID_SPEC)
    if invalid is not None and invalid.status == "True":
        return invalid.reason, invalid.message
    if status.phase == Phase.FAILED:
        failed = get_condition(status.conditions, ConditionType.FAILED)
        return (failed.reason, failed.message) if failed else ("Failed", "the job failed")
    restarting = get_condition(status.conditions, ConditionType.RESTARTING)
    if (
        restarting is not None
        and restarting.status == "True"
        and restarting.reason == failover.NO_FEASIBLE_NODE
    ):
        return restarting.reason, restarting.message
    return None


def _kstatus_conditions(status: GaudiTrainingJobStatus, generation: int, now: datetime) -> None:
    """Reconciling / Stalled from the phase and the other conditions (never both True:
    kstatus takes the first True one it meets). A finished, suspended or running job has
    neither, which kstatus reads as Current."""
    conds = status.conditions
    stalled = _stalled(status)
    phase = status.phase.value
    if stalled is not None:
        conds = set_condition(conds, STALLED, True, *stalled, now, generation)
        conds = clear_condition(conds, RECONCILING, stalled[0], now, generation)
        ready = get_condition(conds, ConditionType.READY)
        if ready is not None and ready.status == "True":  # e.g. a running job's spec broke
            conds = set_condition(conds, ConditionType.READY, False, *stalled, now, generation)
    else:
        conds = clear_condition(conds, STALLED, phase, now, generation)
        if status.phase in _CONVERGING:
            restarting = get_condition(conds, ConditionType.RESTARTING)
            detail = (
                restarting.message
                if status.phase == Phase.RESTARTING and restarting and restarting.message
                else f"{status.workers} workers ready"
            )
            conds = set_condition(conds, RECONCILING, True, phase, detail, now, generation)
        else:
            conds = clear_condition(conds, RECONCILING, phase, now, generation)
    status.conditions = conds


def _cleanup(policy: CleanPodPolicy, pods: list[WorkerPod]) -> list[WorkerPod]:
    if policy == CleanPodPolicy.ALL:
        chosen = [p for p in pods if not p.deleting]
    elif policy == CleanPodPolicy.RUNNING:
        chosen = [p for p in pods if not p.deleting and not p.terminal]
    else:
        chosen = []
    return sorted(chosen, key=lambda p: -(p.index if p.index is not None else 1 << 30))


def _finish(
    job: JobView,
    spec: GaudiTrainingJobSpec,
    status: GaudiTrainingJobStatus,
    before: GaudiTrainingJobStatus,
    pods: list[WorkerPod],
    now: datetime,
    phase: Phase,
    reason: str,
    message: str,
) -> Plan:
    status.phase = phase
    status.completion_time = api.to_rfc3339(now)
    kind = ConditionType.SUCCEEDED if phase == Phase.SUCCEEDED else ConditionType.FAILED
    status.conditions = set_condition(
        status.conditions, kind, True, reason, message, now, job.generation
    )
    # A succeeded job is where its manifest wanted it: Ready, so GitOps waits end there.
    status.conditions = set_condition(
        status.conditions,
        ConditionType.READY,
        phase == Phase.SUCCEEDED,
        reason,
        message,
        now,
        job.generation,
    )
    out = _finished(job, spec, status, before, pods, now)
    event_type = "Normal" if phase == Phase.SUCCEEDED else "Warning"
    out.events.insert(0, Event(event_type, reason, f"job {phase.value.lower()}: {message}"))
    return out


def _finished(
    job: JobView,
    spec: GaudiTrainingJobSpec,
    status: GaudiTrainingJobStatus,
    before: GaudiTrainingJobStatus,
    pods: list[WorkerPod],
    now: datetime,
) -> Plan:
    out = Plan(status=status, spec=spec)
    out.delete = _cleanup(spec.run_policy.clean_pod_policy, pods)
    # Spares never run anything of a finished job, whatever cleanPodPolicy keeps.
    out.delete += [p for p in pods if p.spare and not p.deleting and p not in out.delete]
    gen = status.restart_generation
    in_world = {
        p.index: p
        for p in pods
        if p.generation == gen and p.index is not None and p.index < spec.workers.replicas
    }
    _count(status, spec, [p for p in pods if p not in out.delete], in_world, spec.workers.replicas)
    ttl = spec.run_policy.ttl_seconds_after_finished
    done = api.parse_rfc3339(status.completion_time)
    if ttl is not None and done is not None:
        left = ttl - (now - done).total_seconds()  # seconds: any int64 ttl (see the deadline)
        if left <= 0:
            out.delete_job = True
            out.events.append(
                Event(
                    "Normal",
                    "TTLExpired",
                    f"deleting the job: finished more than "
                    f"spec.runPolicy.ttlSecondsAfterFinished ({ttl}s) ago",
                )
            )
        else:
            out.requeue_after = min(left, REQUEUE_CAP_SECONDS)
    return out


def _suspended(
    job: JobView,
    spec: GaudiTrainingJobSpec,
    status: GaudiTrainingJobStatus,
    before: GaudiTrainingJobStatus,
    pods: list[WorkerPod],
    now: datetime,
    why: tuple[str, str],
) -> Plan:
    out = Plan(status=status, spec=spec, ensure_children=True)
    out.delete = _cleanup(CleanPodPolicy.ALL, pods)
    reason, message = why
    status.phase = Phase.SUSPENDED
    status.start_time = None  # activeDeadlineSeconds restarts on resume
    status.replicas = status.ready_replicas = 0
    status.workers = f"0/{spec.workers.replicas}"
    status.hpus = hpus_held(spec, pods)
    status.conditions = set_condition(
        status.conditions,
        ConditionType.SUSPENDED,
        True,
        reason,
        message,
        now,
        job.generation,
    )
    # No Ready while suspended: nothing runs, yet the job is where its spec asks. Ready
    # False would read as "still converging" to kstatus (Flux waits would never end), and
    # True would end a `kubectl wait --for=condition=Ready` before any worker runs.
    status.conditions = [c for c in status.conditions if c.type != ConditionType.READY]
    if before.phase != Phase.SUSPENDED:
        out.events.append(Event("Normal", "Suspended", f"{message}: deleting workers"))
    return out


# --- which status changes may wait --------------------------------------------------------

# Workers' progress on their way to Running: counts, and whether they exist and have nodes.
PROGRESS_FIELDS = frozenset({"replicas", "readyReplicas", "workers", "hpus"})
PROGRESS_CONDITIONS = frozenset({ConditionType.CREATED.value, ConditionType.SCHEDULED.value})
_PROGRESS_PHASES = frozenset({Phase.PENDING.value, Phase.STARTING.value})


def waiting_for_placement(status: Mapping[str, Any]) -> bool:
    """A worker the scheduler cannot place (Scheduled=False): worth saying soon."""
    return any(
        c.get("type") == ConditionType.SCHEDULED.value and c.get("status") == "False"
        for c in status.get("conditions") or []
    )


def first_progress(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """True when `new` is a job's first status (the reconciler never wrote one) and says
    only that its workers are on their way (Pending or Starting). The reconciler may hold
    it for a few seconds too, so that a job whose workers run soon costs one status write
    from create to Running; a decision (a refusal, an invalid spec) is written at once."""
    return not old.get("phase") and new.get("phase") in _PROGRESS_PHASES


def progress_only(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """True when the status change from `old` to `new` is workers' progress alone: the
    counts, the Created and Scheduled conditions, Pending <-> Starting, and the messages of
    other conditions whose status and reason stay. The reconciler may hold such a change
    for a moment (`--status-debounce-seconds`), so that a job's way from created to Running
    costs two status writes, not one per step; any other change is written at once."""
    changed = {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)}
    if changed - PROGRESS_FIELDS - {"phase", "conditions"}:
        return False
    if "phase" in changed and {old.get("phase"), new.get("phase")} - _PROGRESS_PHASES:
        return False
    if "conditions" not in changed:
        return True
    before = {c.get("type"): c for c in old.get("conditions") or []}
    after = {c.get("type"): c for c in new.get("conditions") or []}
    for type_ in before.keys() | after.keys():
        a, b = before.get(type_), after.get(type_)
        if a == b:
            continue
        if type_ in PROGRESS_CONDITIONS and (b or {}).get("reason") not in REFUSED_REASONS:
            continue  # a refusal (quota) is a decision: written at once
        if a is None or b is None or a.get("status") != b.get("status"):
            return False
        reasons = {a.get("reason"), b.get("reason")}
        # Reconciling's reason is the phase: Pending -> Starting is progress too.
        if len(reasons) > 1 and not (type_ == RECONCILING and reasons <= _PROGRESS_PHASES):
            return False
    return True
