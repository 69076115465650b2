"""The GaudiTrainingJob spec: enums and pydantic models.

The models mirror `crds/gauditrainingjobs.yaml` (DESIGN.md §3). Attributes are
snake_case, the wire format is camelCase; `model_validate(body["spec"])` and
`model_dump(by_alias=True, exclude_none=True)` convert between the two. Defaults match the
CRD's, so an object that skipped the API server's defaulting (an old object, a unit test)
reads the same as one that did not.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from gaudi_operator.api.names import DEVICE_PLUGIN_ENV, SUPPORTED_HPUS_PER_WORKER

# --- enums ------------------------------------------------------------------------------


class Phase(StrEnum):
    PENDING = "Pending"
    STARTING = "Starting"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SCALING = "Scaling"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"

    @property
    def finished(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.FAILED)


class RestartStrategy(StrEnum):
    RECREATE_ALL = "RecreateAll"
    RECREATE_FAILED = "RecreateFailed"


class FailureAction(StrEnum):
    FAIL = "Fail"  # the job fails at once
    RESTART = "Restart"  # restart per restartStrategy, counted against maxRestarts
    RESTART_IGNORE_LIMIT = "RestartIgnoreLimit"  # restart, not counted (infrastructure only)


class FailureReason(StrEnum):
    """Why a worker was lost; `failurePolicy.rules[].reasons` match these."""

    ERROR = "Error"  # the container exited non-zero
    OOM_KILLED = "OOMKilled"
    EVICTED = "Evicted"
    PREEMPTED = "Preempted"
    NODE_LOST = "NodeLost"  # node NotReady past nodeFailureGraceSeconds, or gone
    HPU_UNHEALTHY = "HPUUnhealthy"
    # A scale-out (external) NIC port of a worker's card went down; multi-worker jobs only.
    SCALE_OUT_LINK_DOWN = "ScaleOutLinkDown"
    STALLED = "Stalled"  # no training progress for stallTimeoutSeconds
    # Some workers hold HPUs while others could not be placed for placementTimeoutSeconds.
    PLACEMENT_TIMEOUT = "PlacementTimeout"


# Failures the training program did not cause: the only ones RestartIgnoreLimit may match
# (an unlimited restart on a program's own exit code would loop forever). The CRD's CEL
# rule on failurePolicy.rules holds the same list.
INFRASTRUCTURE_REASONS = frozenset(
    {
        FailureReason.EVICTED,
        FailureReason.PREEMPTED,
        FailureReason.NODE_LOST,
        FailureReason.HPU_UNHEALTHY,
        FailureReason.SCALE_OUT_LINK_DOWN,
        FailureReason.PLACEMENT_TIMEOUT,
    }
)


class CleanPodPolicy(StrEnum):
    ALL = "All"  # delete every worker pod when the job finishes
    RUNNING = "Running"  # delete the workers still running; keep finished ones for logs
    NONE = "None"  # keep all pods


class SuccessPolicy(StrEnum):
    ALL_WORKERS = "AllWorkers"
    RANK0 = "Rank0"


class MetricType(StrEnum):
    AVERAGE_VALUE = "AverageValue"  # query / replicas is compared with target
    VALUE = "Value"  # query is compared with target


class ConditionType(StrEnum):
    CREATED = "Created"  # children created for the current generation
    READY = "Ready"  # every desired worker is running and ready
    SCHEDULED = "Scheduled"  # every worker of the current world has a node
    SUSPENDED = "Suspended"
    RESTARTING = "Restarting"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    INVALID_SPEC = "InvalidSpec"  # the spec slipped past the CRD but cannot be run
    # Autoscaling (autoscaler.py): the metric cannot be read, so the size holds.
    METRICS_UNAVAILABLE = "MetricsUnavailable"
    # Autoscaling: the built-in loop and an external autoscaler both target the job.
    AUTOSCALING_CONFLICT = "AutoscalingConflict"


# --- models -----------------------------------------------------------------------------


class Model(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are kept, not lost."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="allow",
        use_enum_values=False,
    )

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class Workers(Model):
    replicas: int = Field(default=1, ge=1)
    min_replicas: int | None = Field(default=None, ge=1)
    max_replicas: int | None = Field(default=None, ge=1)
    # Warm spares (failurePolicy.restartInPlace): pods started outside the world that take
    # a lost worker's index at once (docs/failover.md#warm-spares).
    spares: int = Field(default=0, ge=0, le=64)

    @property
    def min(self) -> int:
        """Effective lower bound: minReplicas, or replicas when unset."""
        return self.min_replicas if self.min_replicas is not None else self.replicas

    @property
    def max(self) -> int:
        """Effective upper bound: maxReplicas, or max(replicas, minReplicas) when unset."""
        if self.max_replicas is not None:
            return self.max_replicas
        return max(self.replicas, self.min)


class ResourceRequirements(Model):
    requests: dict[str, int | str] = Field(default_factory=dict)
    limits: dict[str, int | str] = Field(default_factory=dict)


class Checkpoint(Model):
    volume_claim_name: str | None = None
    path: str = "/checkpoints"
    interval_steps: int = Field(default=500, ge=1)


class Batch(Model):
    global_batch_size: int = Field(ge=1)
    micro_batch_size: int = Field(ge=1)


class FailureRule(Model):
    exit_codes: list[int] | None = None
    reasons: list[FailureReason] | None = None
    action: FailureAction


class FailurePolicy(Model):
    max_restarts: int = Field(default=5, ge=0)
    restart_strategy: RestartStrategy = RestartStrategy.RECREATE_ALL
    backoff_seconds: int = Field(default=10, ge=0)
    node_failure_grace_seconds: int = Field(default=30, ge=0)
    stall_timeout_seconds: int = Field(default=900, ge=0)  # 0 disables stall detection
    # Without gang scheduling: release a partly placed world after this long (0: never).
    placement_timeout_seconds: int = Field(default=300, ge=0)
    exclude_failed_nodes: bool = True
    # The operator restarts a failed training process inside its healthy pod
    # (gaudi_train.managed's control endpoint) instead of recreating the pods.
    restart_in_place: bool = False
    rules: list[FailureRule] = Field(default_factory=list)


class MetricSpec(Model):
    query: str = ""
    target: float = 100.0
    type: MetricType = MetricType.AVERAGE_VALUE


class ScaleBehavior(Model):
    stabilization_seconds: int = Field(default=60, ge=0)
    max_step: int = Field(default=1, ge=1)


def _scale_up() -> ScaleBehavior:
    return ScaleBehavior(stabilization_seconds=60, max_step=2)


def _scale_down() -> ScaleBehavior:
    return ScaleBehavior(stabilization_seconds=300, max_step=1)


class Autoscaling(Model):
    enabled: bool = False
    # Alias spelled out: to_camel would give "prometheusUrl".
    prometheus_url: str = Field(default="", alias="prometheusURL")
    metric: MetricSpec = Field(default_factory=MetricSpec)
    tolerance: float = Field(default=0.1, ge=0, le=1)
    cooldown_seconds: int = Field(default=300, ge=0)
    scale_up: ScaleBehavior = Field(default_factory=_scale_up)
    scale_down: ScaleBehavior = Field(default_factory=_scale_down)
    min_efficiency: float = Field(default=0.7, ge=0, le=1)
    pending_timeout_seconds: int = Field(default=120, ge=1)


class Scheduling(Model):
    gang: bool = False
    scheduler_name: str = ""
    queue: str = ""
    priority_class_name: str = ""


class Gaudi(Model):
    """Intel's pod contract for HPU workers (docs/gaudi.md); on by default."""

    # hostIPC: true and the SYS_NICE capability, as in every Kubernetes example of Intel's
    # (hostIPC "is required for distributed training using HCCL").
    host_ipc: bool = Field(default=True, alias="hostIPC")
    sys_nice: bool = True
    # Jobs that can have more than one worker run only on nodes labelled scale-out ready.
    require_scale_out_ready: bool = True


class RunPolicy(Model):
    active_deadline_seconds: int | None = Field(default=None, ge=1)
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0)
    clean_pod_policy: CleanPodPolicy = CleanPodPolicy.RUNNING
    success_policy: SuccessPolicy = SuccessPolicy.ALL_WORKERS


class GaudiTrainingJobSpec(Model):
    suspend: bool = False
    image: str = Field(min_length=1)
    command: list[str] | None = None
    args: list[str] | None = None
    hpus_per_worker: int = Field(default=8, ge=1, le=8)
    workers: Workers = Field(default_factory=Workers)
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)
    template: dict[str, Any] = Field(default_factory=dict)
    checkpoint: Checkpoint = Field(default_factory=Checkpoint)
    batch: Batch | None = None
    failure_policy: FailurePolicy = Field(default_factory=FailurePolicy)
    autoscaling: Autoscaling = Field(default_factory=Autoscaling)
    scheduling: Scheduling = Field(default_factory=Scheduling)
    run_policy: RunPolicy = Field(default_factory=RunPolicy)
    gaudi: Gaudi = Field(default_factory=Gaudi)

    @model_validator(mode="after")
    def _cross_field(self) -> GaudiTrainingJobSpec:
        # The same checks as the CRD's CEL rules: an object that reached the operator
        # without them (CRD installed without validation, an old stored object) fails
        # here, and the operator reports it as InvalidSpec instead of running it.
        if self.hpus_per_worker not in SUPPORTED_HPUS_PER_WORKER:
            raise ValueError(hpus_message(self.hpus_per_worker))
        for path in device_plugin_env_in(self.template):
            raise ValueError(device_plugin_env_message(path))
        w = self.workers
        if not w.min <= w.replicas <= w.max:
            raise ValueError(
                f"spec.workers: need minReplicas <= replicas <= maxReplicas, "
                f"got {w.min} <= {w.replicas} <= {w.max}"
            )
        if self.batch is not None:
            b = self.batch
            if b.global_batch_size % b.micro_batch_size:
                raise ValueError(
                    f"spec.batch.globalBatchSize ({b.global_batch_size}) must be a multiple "
                    f"of spec.batch.microBatchSize ({b.micro_batch_size})"
                )
            per_step = b.micro_batch_size * self.hpus_per_worker * w.replicas
            if b.global_batch_size % per_step:
                raise ValueError(
                    f"spec.batch.globalBatchSize ({b.global_batch_size}) must be a multiple "
                    f"of microBatchSize * hpusPerWorker * workers.replicas ({per_step})"
                )
        for i, rule in enumerate(self.failure_policy.rules):
            if bool(rule.exit_codes) == bool(rule.reasons):
                raise ValueError(
                    f"spec.failurePolicy.rules[{i}]: set exactly one of exitCodes or reasons"
                )
            if rule.action == FailureAction.RESTART_IGNORE_LIMIT and (
                rule.exit_codes or not set(rule.reasons or ()) <= INFRASTRUCTURE_REASONS
            ):
                raise ValueError(
                    f"spec.failurePolicy.rules[{i}].action: RestartIgnoreLimit is only valid "
                    f"for reasons {sorted(INFRASTRUCTURE_REASONS)}"
                )
        if w.spares and not self.failure_policy.restart_in_place:
            raise ValueError(
                "spec.workers.spares needs spec.failurePolicy.restartInPlace: true (a spare "
                "joins the world through the launchers' control endpoint)"
            )
        if self.autoscaling.enabled and not self.autoscaling.metric.query.strip():
            raise ValueError("spec.autoscaling.metric.query is required when enabled")
        if self.scheduling.gang and not self.scheduling.scheduler_name:
            raise ValueError("spec.scheduling.gang needs spec.scheduling.schedulerName")
        return self


def hpus_message(hpus: int) -> str:
    return (
        f"spec.hpusPerWorker must be 1, 2, 4 or 8, got {hpus}: Intel supports a whole node "
        f"or a module group of 1, 2 or 4 cards per workload"
    )


def device_plugin_env_in(template: dict[str, Any]) -> list[str]:
    """Paths of the template's env entries that set a variable the device plugin owns."""
    spec = template.get("spec") if isinstance(template, dict) else None
    if not isinstance(spec, dict):
        return []
    out = []
    for kind in ("containers", "initContainers"):
        for i, c in enumerate(spec.get(kind) or []):
            env = c.get("env") if isinstance(c, dict) else None
            for j, e in enumerate(env or []):
                if isinstance(e, dict) and e.get("name") in DEVICE_PLUGIN_ENV:
                    out.append(f"spec.template.spec.{kind}[{i}].env[{j}]")
    return out


def device_plugin_env_message(path: str) -> str:
    names = ", ".join(DEVICE_PLUGIN_ENV)
    return (
        f"{path}: the Habana device plugin sets {names} for the cards the kubelet "
        f"allocates; a template must not set them"
    )
