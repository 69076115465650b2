"""What a pass sees, parsed once at the edge: the job (spec and status as models), its
worker pods (times as datetimes) and failover's signals (nodes as `NodeHealth`).

`observe()` builds the one `Observation` a pass decides from; nothing after it parses a
string or calls a client.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from gaudi_operator import api
from gaudi_operator.api import GaudiTrainingJobSpec, GaudiTrainingJobStatus
from gaudi_operator.failover.policy import Signals
from gaudi_operator.jobs.gaudi import ScaleOut
from gaudi_train.control_protocol import LauncherStatus


@dataclass(frozen=True)
class WorkerPod:
    """The facts about one worker pod that decisions need (also the pod index's value)."""

    name: str
    uid: str = ""
    # The controlling owner's uid: the job incarnation the pod belongs to.
    owner_uid: str = ""
    index: int | None = None
    generation: int | None = None
    phase: str = "Pending"
    ready: bool = False
    deleting: bool = False
    node: str | None = None
    exit_code: int | None = None
    reason: str | None = None
    message: str | None = None
    # For failover: the DisruptionTarget condition's reason (eviction, preemption, taint),
    # when the worker container finished, and the scheduler's "cannot place" message.
    disruption: str | None = None
    finished_at: datetime | None = None
    started_at: datetime | None = None
    unschedulable: str | None = None
    unschedulable_since: datetime | None = None
    ip: str | None = None  # status.podIP: where its launcher's control endpoint listens
    # A warm spare not in any world yet (spec.workers.spares): it has no index.
    spare: bool = False

    @property
    def live(self) -> bool:
        """Neither finished nor being deleted: it can be (or stay) in a world."""
        return not self.deleting and not self.terminal

    @property
    def terminal(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    @property
    def failed(self) -> bool:
        return self.phase == "Failed"

    @property
    def succeeded(self) -> bool:
        return self.phase == "Succeeded"


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def observe_pod(pod: Mapping[str, Any]) -> WorkerPod:
    """Reduce a Pod object to a WorkerPod."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    status = pod.get("status") or {}
    exit_code = reason = message = finished_at = None
    for cs in status.get("containerStatuses") or []:
        if cs.get("name") != api.WORKER_CONTAINER:
            continue
        term = (cs.get("state") or {}).get("terminated")
        if term:
            exit_code = _int(term.get("exitCode"))
            reason = term.get("reason")
            message = term.get("message")
            finished_at = api.parse_rfc3339(term.get("finishedAt"))
    conds = {c.get("type"): c for c in status.get("conditions") or []}
    disruption = conds.get("DisruptionTarget") or {}
    scheduled = conds.get("PodScheduled") or {}
    unplaced = _unplaced(scheduled)
    # Pod-level reasons (Evicted, Preempting, ...) say more than the container's.
    reason = status.get("reason") or reason
    message = status.get("message") or message
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    return WorkerPod(
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        owner_uid=next(
            (r.get("uid", "") for r in meta.get("ownerReferences") or [] if r.get("controller")),
            "",
        ),
        index=_int(labels.get(api.LABEL_WORKER_INDEX)),
        generation=_int(labels.get(api.LABEL_GENERATION)),
        phase=status.get("phase") or "Pending",
        ready=ready,
        deleting=bool(meta.get("deletionTimestamp")),
        node=(pod.get("spec") or {}).get("nodeName"),
        exit_code=exit_code,
        reason=reason,
        message=message,
        disruption=disruption.get("reason") if disruption.get("status") == "True" else None,
        finished_at=finished_at,
        started_at=api.parse_rfc3339(status.get("startTime")),
        unschedulable=scheduled.get("message") or "unschedulable" if unplaced else None,
        unschedulable_since=api.parse_rfc3339(scheduled.get("lastTransitionTime"))
        if unplaced
        else None,
        ip=status.get("podIP") or None,
        spare=labels.get(api.LABEL_SPARE) == "true" and api.LABEL_WORKER_INDEX not in labels,
    )


@dataclass(frozen=True)
class JobView:
    """The job object as the decisions see it."""

    name: str
    namespace: str
    uid: str
    generation: int
    spec: Mapping[str, Any]
    status: Mapping[str, Any]
    deleting: bool = False

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> JobView:
        meta = body.get("metadata") or {}
        return cls(
            name=meta.get("name", ""),
            namespace=meta.get("namespace", ""),
            uid=meta.get("uid", ""),
            generation=int(meta.get("generation") or 0),
            spec=body.get("spec") or {},
            status=body.get("status") or {},
            deleting=bool(meta.get("deletionTimestamp")),
        )


@dataclass(frozen=True)
class Observation:
    """Everything one pass decides from."""

    job: JobView
    now: datetime
    pods: tuple[WorkerPod, ...] = ()  # the job's own: controlled by this job's uid
    # Pods with the job's label not controlled by its uid: an earlier job of the same name,
    # deleted and re-created before the garbage collector removed its workers, or pods left
    # without an owner (`kubectl delete --cascade=orphan`).
    foreign: tuple[WorkerPod, ...] = ()
    # The spec as a model, or why it cannot be one (each problem naming its field).
    spec: GaudiTrainingJobSpec | None = None
    spec_error: str | None = None
    status: GaudiTrainingJobStatus = field(default_factory=GaudiTrainingJobStatus)
    signals: Signals = field(default_factory=Signals)
    # The scale-out readiness gate (jobs.gaudi): None when it is off or not known yet.
    scale_out: ScaleOut | None = None
    # failurePolicy.restartInPlace: each current worker's launcher status, by pod name, as
    # its control endpoint last answered (`failover.launchers`); no key: not heard from.
    launchers: Mapping[str, LauncherStatus] = field(default_factory=dict)
    # ... and the pods whose launcher answered before and cannot be reached now.
    unreachable: frozenset[str] = frozenset()

    @property
    def replicas(self) -> int:
        return self.spec.workers.replicas if self.spec is not None else 1

    @property
    def generation(self) -> int:
        """The restart generation (status.restartGeneration)."""
        return self.status.restart_generation


def describe_spec_error(err: ValidationError) -> str:
    """One line per problem, each naming the field as `spec.a.b[0].c`."""
    lines = []
    for e in err.errors():
        path = "spec"
        for part in e["loc"]:
            path += f"[{part}]" if isinstance(part, int) else f".{part}"
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(msg if msg.startswith("spec.") else f"{path}: {msg}")
    return "; ".join(lines)


def parse_status(raw: Mapping[str, Any]) -> GaudiTrainingJobStatus:
    """Lenient: a status we cannot read is rebuilt from scratch rather than crash."""
    try:
        return GaudiTrainingJobStatus.model_validate(dict(raw))
    except ValidationError:
        return GaudiTrainingJobStatus()


def observe(
    job: JobView,
    pods: Iterable[WorkerPod],
    now: datetime,
    signals: Signals | None = None,
) -> Observation:
    spec: GaudiTrainingJobSpec | None = None
    error: str | None = None
    try:
        spec = GaudiTrainingJobSpec.model_validate(dict(job.spec))
    except ValidationError as err:
        error = describe_spec_error(err)
    pods = tuple(pods)
    return Observation(
        job=job,
        now=now,
        pods=tuple(p for p in pods if _ours(p, job.uid)),
        foreign=tuple(p for p in pods if not _ours(p, job.uid)),
        spec=spec,
        spec_error=error,
        status=parse_status(job.status),
        signals=signals or Signals(),
    )


def _ours(pod: WorkerPod, job_uid: str) -> bool:
    # Owner references by uid, never by name or label alone (client-go's habit): the
    # operator sets the controller reference on every worker it creates, so a pod without
    # one is not ours, whatever its labels say (`kubectl delete --cascade=orphan` leaves
    # such pods behind, and a job re-created under the same name must not take them).
    return pod.owner_uid == job_uid


def _unplaced(scheduled: Mapping[str, Any]) -> bool:
    return scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable"


def unplaced(pod: Mapping[str, Any]) -> bool:
    """The scheduler found no node for the pod (its PodScheduled condition says so)."""
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "PodScheduled":
            return _unplaced(c)
    return False
