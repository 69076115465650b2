"""Kueue admission for a GaudiTrainingJob, decided purely: one Workload per job, and what
the job and its Workload should look like given both.

Why a Workload per job (Kueue's "external framework" contract) and not a plain pod group:
the job is the unit Kueue must admit, preempt and account for. A pod group would let
Kueue evict single pods, which the operator would see as worker failures and restart
(counting them against maxRestarts); it fixes the group size in a label, so a resize
would need a new group; and it hides from Kueue that all workers restart together. With a
Workload the whole world (one pod set, `workers.replicas` pods with the worker's exact
requests) is admitted or not at all, preemption arrives as one eviction that the operator
turns into `spec.suspend` (the workers checkpoint on SIGTERM and resume later), and quota
is held from admission until the job finishes.

The contract, level-based (every pass re-derives it from the job and its Workload):

- a job names its LocalQueue in `spec.scheduling.queue` (unless it is a Volcano gang job,
  whose queue is Volcano's);
- until the operator has seen it, and whenever its Workload is not admitted, the job is
  held: `spec.suspend` is set true and the `Queued` condition says why (Kueue's reason
  and message), so no worker exists without quota;
- admitted: `Queued` turns False (reason Admitted), then `spec.suspend` false;
- evicted (preempted, deactivated, ...): `spec.suspend` true; once no worker is left the
  operator hands the quota back (clears the admission) and Kueue requeues the Workload;
- finished: the Workload gets `Finished`, which releases its quota;
- a change Kueue cannot follow (worker count, HPUs, queue) replaces the Workload.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gaudi_operator import api
from gaudi_operator.api import Condition, GaudiTrainingJobSpec, GaudiTrainingJobStatus, Phase
from gaudi_operator.jobs import manifests
from gaudi_operator.jobs.gaudi import DEFAULTS, GaudiSettings

KUEUE_GROUP = "kueue.x-k8s.io"
WORKLOAD_VERSION = "v1beta2"
WORKLOAD_PLURAL = "workloads"
WORKLOAD_API_VERSION = f"{KUEUE_GROUP}/{WORKLOAD_VERSION}"
POD_SET = "workers"
# Kueue's label for a WorkloadPriorityClass, set on the job as on any Kueue-managed job.
PRIORITY_CLASS_LABEL = f"{KUEUE_GROUP}/priority-class"
# On the Workload, as Kueue's own integrations set it: Kueue names the job in its messages.
JOB_UID_LABEL = f"{KUEUE_GROUP}/job-uid"
# Kueue's finalizer, as its own integrations use it: a deleted Workload keeps its quota
# until the operator has seen the last worker go (they may checkpoint for minutes).
FINALIZER = f"{KUEUE_GROUP}/resource-in-use"

QUEUED = "Queued"  # the job's condition: True while it waits for (re-)admission
ADMITTED = "Admitted"


@dataclass(frozen=True)
class Priority:
    """A resolved priority class: Kueue needs the value on the Workload itself."""

    kind: str  # PriorityClass | WorkloadPriorityClass
    name: str
    value: int

    def ref(self) -> dict[str, str]:
        group = "scheduling.k8s.io" if self.kind == "PriorityClass" else KUEUE_GROUP
        return {"group": group, "kind": self.kind, "name": self.name}


def managed(spec: GaudiTrainingJobSpec) -> bool:
    """Does Kueue decide when this job runs?"""
    return bool(spec.scheduling.queue) and not manifests.is_volcano(spec)


def suspension(
    spec: GaudiTrainingJobSpec, status: GaudiTrainingJobStatus
) -> tuple[str, str] | None:
    """Why the job must have no workers now, as (reason, message); None when it may run.

    The jobs plan asks this instead of reading `spec.suspend` alone: a queued job is held
    from its first pass, before the operator has written `spec.suspend` for it."""
    if managed(spec):
        queued = api.get_condition(status.conditions, QUEUED)
        queue = spec.scheduling.queue
        if queued is None:
            return QUEUED, f"waiting for admission by Kueue (LocalQueue {queue})"
        if queued.status == "True":
            why = f": {queued.message}" if queued.message else ""
            return QUEUED, f"waiting for admission by Kueue (LocalQueue {queue}){why}"
    if spec.suspend:
        return "Suspended", "spec.suspend is true: workers deleted, the job is kept"
    return None


def workload_name(job_name: str, uid: str) -> str:
    # The uid suffix: a job deleted and created again under its name gets a new Workload
    # while the old one is still being garbage-collected.
    return f"gtj-{job_name}-{uid[:8]}"[:253]


def workload_manifest(
    spec: GaudiTrainingJobSpec,
    job: manifests.JobRef,
    priority: Priority | None = None,
    gaudi: GaudiSettings = DEFAULTS,
) -> dict[str, Any]:
    """One pod set: every worker, with the pod spec the operator will create (requests,
    node selector, tolerations), so Kueue accounts exactly what will run."""
    pod = manifests.worker_pod_manifest(spec, job, 0, 0, settings=gaudi)
    pod_spec = pod["spec"]
    for c in pod_spec.get("containers") or []:
        c.pop("env", None)  # per-worker values: meaningless for the pod set
    wl_spec: dict[str, Any] = {
        "queueName": spec.scheduling.queue,
        "podSets": [
            {
                "name": POD_SET,
                # Warm spares hold what a worker holds: Kueue reserves quota for them too.
                "count": spec.workers.replicas + spec.workers.spares,
                "template": {
                    "metadata": {"labels": manifests.child_labels(job.name)},
                    "spec": pod_spec,
                },
            }
        ],
    }
    if priority is not None:
        wl_spec["priorityClassRef"] = priority.ref()
        wl_spec["priority"] = priority.value
    return {
        "apiVersion": WORKLOAD_API_VERSION,
        "kind": "Workload",
        "metadata": {
            "name": workload_name(job.name, job.uid),
            "namespace": job.namespace,
            "labels": {**manifests.child_labels(job.name), JOB_UID_LABEL: job.uid},
            "ownerReferences": [manifests.owner_reference(job)],
            "finalizers": [FINALIZER],
        },
        "spec": wl_spec,
    }


# --- reading a Workload --------------------------------------------------------------------


@dataclass(frozen=True)
class WorkloadView:
    """What the decision needs from a Workload object."""

    name: str
    owner_uid: str | None
    queue: str
    count: int | None
    hpus: int | None
    conditions: Mapping[str, Mapping[str, Any]]
    cluster_queue: str | None
    resource_version: str = ""
    deleting: bool = False
    finalizers: tuple[str, ...] = ()

    def _true(self, type_: str) -> Mapping[str, Any] | None:
        c = self.conditions.get(type_)
        return c if c is not None and c.get("status") == "True" else None

    @property
    def admitted(self) -> bool:
        return self._true(ADMITTED) is not None

    @property
    def quota_reserved(self) -> bool:
        return self.cluster_queue is not None or self._true("QuotaReserved") is not None

    @property
    def evicted(self) -> Mapping[str, Any] | None:
        return self._true("Evicted")

    @property
    def finished(self) -> bool:
        return self._true("Finished") is not None

    def pending(self) -> tuple[str, str]:
        """Kueue's reason and message for a Workload still waiting."""
        for type_ in ("QuotaReserved", ADMITTED):
            c = self.conditions.get(type_)
            if c is not None and c.get("status") == "False" and c.get("message"):
                return str(c.get("reason") or "Pending"), str(c["message"])
        return "Pending", f"Workload {self.name} is waiting for Kueue"


def read_workload(obj: Mapping[str, Any]) -> WorkloadView:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    owner = next(
        (
            o.get("uid")
            for o in meta.get("ownerReferences") or []
            if o.get("kind") == api.KIND and o.get("controller")
        ),
        None,
    )
    pod_sets = spec.get("podSets") or []
    ps = next((p for p in pod_sets if p.get("name") == POD_SET), None)
    hpus = None
    if ps is not None:
        for c in ((ps.get("template") or {}).get("spec") or {}).get("containers") or []:
            if c.get("name") == api.WORKER_CONTAINER:
                value = ((c.get("resources") or {}).get("requests") or {}).get(api.GAUDI_RESOURCE)
                hpus = int(value) if value is not None else None
    admission = status.get("admission") or None
    return WorkloadView(
        name=meta.get("name", ""),
        owner_uid=owner,
        queue=spec.get("queueName") or "",
        count=int(ps["count"]) if ps is not None and "count" in ps else None,
        hpus=hpus,
        conditions={c.get("type"): c for c in status.get("conditions") or []},
        cluster_queue=admission.get("clusterQueue") if admission else None,
        resource_version=meta.get("resourceVersion", ""),
        deleting=bool(meta.get("deletionTimestamp")),
        finalizers=tuple(meta.get("finalizers") or ()),
    )


# --- the decision --------------------------------------------------------------------------


@dataclass(frozen=True)
class JobFacts:
    """The job as the queueing decision sees it."""

    name: str
    namespace: str
    uid: str
    generation: int
    spec: GaudiTrainingJobSpec
    status: GaudiTrainingJobStatus
    live_workers: int  # worker pods not yet gone or finished, of any generation


@dataclass
class Decision:
    create: dict[str, Any] | None = None  # a Workload to create
    delete: str | None = None  # a Workload (name) to delete
    suspend: bool | None = None  # the spec.suspend to write, when it differs
    queued: tuple[bool, str, str] | None = None  # the Queued condition to write
    # A status merge patch for the Workload (hand the quota back, or mark it finished).
    workload_status: dict[str, Any] | None = None
    events: list[tuple[str, str, str]] = field(default_factory=list)


def _condition(
    type_: str, status: bool, reason: str, message: str, now: datetime, gen: int
) -> dict[str, Any]:
    return {
        "type": type_,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message[:32768],
        "lastTransitionTime": api.to_rfc3339(now),
        "observedGeneration": gen,
    }


def _upsert(
    conditions: Sequence[Mapping[str, Any]], new: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """metav1 condition upsert: lastTransitionTime moves only when the status flips."""
    out = [dict(c) for c in conditions]
    for cond in new:
        old = next((c for c in out if c.get("type") == cond["type"]), None)
        if old is None:
            out.append(cond)
            continue
        if old.get("status") == cond["status"]:
            cond = {**cond, "lastTransitionTime": old.get("lastTransitionTime")}
        out[out.index(old)] = cond
    return out


def release_quota(
    wl: WorkloadView, evicted: Mapping[str, Any], now: datetime, generation: int = 0
) -> dict[str, Any]:
    """The status patch that hands an evicted Workload's quota back once its workers are
    gone (what Kueue's own job integrations do): no admission, QuotaReserved and Admitted
    False, Requeued True when Kueue should admit it again (preemption, node failure)."""
    reason = str(evicted.get("reason") or "Evicted")
    message = str(evicted.get("message") or "")
    requeue = reason in ("Preempted", "NodeFailures")
    conds = _upsert(
        list(wl.conditions.values()),
        [
            _condition("Requeued", requeue, reason, message, now, generation),
            _condition("QuotaReserved", False, "Pending", message, now, generation),
            _condition(
                ADMITTED, False, "NoReservation", "The workload has no reservation", now, generation
            ),
        ],
    )
    return {"admission": None, "conditions": conds}


def finish(wl: WorkloadView, succeeded: bool, message: str, now: datetime) -> dict[str, Any]:
    reason = "Succeeded" if succeeded else "Failed"
    return {
        "conditions": _upsert(
            list(wl.conditions.values()), [_condition("Finished", True, reason, message, now, 0)]
        )
    }


def releasable(wl: WorkloadView, live_workers: int) -> list[str] | None:
    """The finalizers to keep on a Workload being deleted once its quota may go (no worker
    of its job is left), or None while it must hold on."""
    if not wl.deleting or FINALIZER not in wl.finalizers or live_workers:
        return None
    return [f for f in wl.finalizers if f != FINALIZER]


def _queued_now(job: JobFacts) -> Condition | None:
    return api.get_condition(job.status.conditions, QUEUED)


def decide(
    job: JobFacts,
    wl: WorkloadView | None,
    now: datetime,
    priority: Priority | None = None,
    gaudi: GaudiSettings = DEFAULTS,
) -> Decision:
    spec, out = job.spec, Decision()
    queued = _queued_now(job)

    def say(waiting: bool, reason: str, message: str) -> None:
        if queued is None or (queued.status == "True") != waiting or queued.reason != reason:
            out.events.append(("Normal", reason, message))
        out.queued = (waiting, reason, message)

    def hold() -> None:
        if not spec.suspend:
            out.suspend = True

    mine = wl if wl is not None and wl.owner_uid == job.uid else None
    if not managed(spec):
        if mine is not None and not mine.deleting:
            out.delete = mine.name
        if queued is not None and queued.status == "True":
            say(False, "NotQueued", "spec.scheduling.queue is empty: Kueue no longer decides")
        return out

    if job.status.phase.finished:
        if mine is not None and not mine.finished and not mine.deleting:
            ok = job.status.phase == Phase.SUCCEEDED
            out.workload_status = finish(mine, ok, f"the job {job.status.phase.value.lower()}", now)
        return out

    if mine is None or mine.deleting:
        hold()
        if mine is None:
            ref = manifests.JobRef(job.name, job.namespace, job.uid)
            out.create = workload_manifest(spec, ref, priority, gaudi)
        say(
            True,
            "Pending",
            f"waiting for Kueue to admit Workload {workload_name(job.name, job.uid)}",
        )
        return out

    changed = []
    pods = spec.workers.replicas + spec.workers.spares
    if mine.count != pods:
        spares = f" (with {spec.workers.spares} spares)" if spec.workers.spares else ""
        changed.append(f"workers {mine.count} -> {pods}{spares}")
    if mine.hpus != spec.hpus_per_worker:
        changed.append(f"hpusPerWorker {mine.hpus} -> {spec.hpus_per_worker}")
    if mine.queue != spec.scheduling.queue:
        changed.append(f"queue {mine.queue} -> {spec.scheduling.queue}")
    if changed:
        # Kueue cannot resize an admitted pod set: stop, and queue the new shape afresh.
        hold()
        out.delete = mine.name
        say(True, "Requeued", "the job changed (" + ", ".join(changed) + "): requeued")
        return out

    evicted = mine.evicted
    if evicted is not None:
        hold()
        reason = str(evicted.get("reason") or "Evicted")
        say(True, reason, f"evicted by Kueue: {evicted.get('message') or reason}")
        if mine.quota_reserved and job.live_workers == 0 and (spec.suspend or out.suspend):
            out.workload_status = release_quota(mine, evicted, now)
        return out

    if mine.admitted:
        say(False, ADMITTED, f"admitted by Kueue (ClusterQueue {mine.cluster_queue})")
        if spec.suspend:
            out.suspend = False
        return out

    hold()
    say(True, *mine.pending())
    return out
