"""The GaudiTrainingJob status models (and the whole object)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from gaudi_operator.api.names import API_VERSION, KIND
from gaudi_operator.api.spec import ConditionType, GaudiTrainingJobSpec, Model, Phase

# Writers share the status (runtime.status_writer): the autoscaler owns these fields and
# condition types, the stall clock `progress`, the reconciler everything else. Each checks
# only its own part for staleness before writing.
AUTOSCALER_FIELDS = ("lastScale", "autoscaling")
AUTOSCALER_CONDITIONS = (ConditionType.METRICS_UNAVAILABLE, ConditionType.AUTOSCALING_CONFLICT)
STALL_CLOCK_FIELDS = ("progress",)


def reconciler_part(status: Mapping[str, Any]) -> dict[str, Any]:
    """The status without the autoscaler's and the stall clock's parts: what the reconciler
    wrote (it decides nothing from `progress`: the stall clock's reading is in memory)."""
    skip = (*AUTOSCALER_FIELDS, *STALL_CLOCK_FIELDS)
    out = {k: v for k, v in status.items() if k not in skip}
    conds = status.get("conditions") or []
    out["conditions"] = [c for c in conds if c.get("type") not in AUTOSCALER_CONDITIONS]
    return out


class Condition(Model):
    """The standard metav1.Condition shape."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


class LastFailure(Model):
    reason: str
    pod: str | None = None
    node: str | None = None
    exit_code: int | None = None
    message: str | None = None
    time: str | None = None


class LastScale(Model):
    # "from" is a Python keyword: attribute from_, wire name from.
    from_: int = Field(alias="from")
    to: int
    reason: str
    value: float | None = None
    time: str | None = None


class ScaleRecommendation(Model):
    """One raw recommendation of the autoscaler, kept over the stabilisation windows."""

    replicas: int
    time: str


class ScaleUpCheck(Model):
    """A scale-up being verified: do the new workers schedule, does throughput hold?"""

    from_: int = Field(alias="from")
    to: int
    time: str  # when it was applied
    baseline_per_worker: float | None = None  # samples/s per worker before it
    running_since: str | None = None  # when all new workers were first seen Running


class ReplicaCeiling(Model):
    """A held upper bound after a rolled-back scale-up."""

    replicas: int
    until: str
    reason: str
    message: str = ""


class ScaleDecision(Model):
    """The autoscaler's latest decision, resize or not, and why."""

    time: str
    current: int
    desired: int | None = None  # what the metric asks for after stabilisation
    replicas: int  # what was chosen
    reason: str
    message: str = ""
    value: float | None = None


class PendingResize(Model):
    """A resize decided and recorded, not yet confirmed applied through /scale."""

    from_: int = Field(alias="from")
    to: int
    time: str


class AutoscalingStatus(Model):
    """The built-in autoscaler's state, kept in status so a restarted operator resumes it."""

    value: float | None = None  # last metric value
    desired_replicas: int | None = None
    recommendations: list[ScaleRecommendation] = Field(default_factory=list)
    applied_replicas: int | None = None  # spec.workers.replicas as the autoscaler last saw it
    last_resize_time: str | None = None  # any resize, the autoscaler's or a manual one
    verifying: ScaleUpCheck | None = None
    ceiling: ReplicaCeiling | None = None
    query_failures: int = 0
    next_query_time: str | None = None
    last_error: str | None = None  # why the last query failed
    last_decision: ScaleDecision | None = None
    pending_resize: PendingResize | None = None


class Progress(Model):
    step: int | None = None
    samples_per_second: float | None = None
    time: str | None = None  # when step last advanced (stall detection)


class GaudiTrainingJobStatus(Model):
    phase: Phase = Phase.PENDING
    conditions: list[Condition] = Field(default_factory=list)
    replicas: int = 0
    ready_replicas: int = 0
    selector: str = ""
    workers: str = ""  # "ready/desired", for the printer column
    hpus: int = 0  # HPUs requested by the current worker pods
    restarts: int = 0
    restart_generation: int = 0
    # failurePolicy.restartInPlace: the in-place generation every launcher of the world
    # must reach (docs/failover.md). Committed before the decision is posted to them.
    in_place_generation: int = 0
    # RecreateFailed's intent: the uids of the failed pods its last restart replaces. A
    # pass that still finds one (the operator died before deleting it) deletes it without
    # counting the restart again; cleared once the world runs again.
    replaced_pods: list[str] | None = None
    last_failure: LastFailure | None = None
    excluded_nodes: list[str] = Field(default_factory=list)
    last_scale: LastScale | None = None
    autoscaling: AutoscalingStatus | None = None
    progress: Progress | None = None
    start_time: str | None = None
    completion_time: str | None = None
    observed_generation: int | None = None


class GaudiTrainingJob(Model):
    """A whole object, for handlers that want metadata with the spec."""

    api_version: str = API_VERSION
    kind: str = KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: GaudiTrainingJobSpec
    status: GaudiTrainingJobStatus = Field(default_factory=GaudiTrainingJobStatus)
