"""What happens when a worker fails: classify the failure, then decide the action.

Pure functions only: callers pass in what they observed (worker pods, nodes, HPU health
from Prometheus, training progress) and the time; they get back failures and a
`FailoverDecision` that says what to delete, what to record and when to come back. The
effects (API calls, events, metrics) live in `reconciler.py` and `failover_handlers.py`.

Reading order: `classify_pod` / `node_failure` / `detect_failures` (what broke),
`action_for` (which rule matches), `decide` (what to do about it), `step` (one reconcile
pass: detect, decide, record in the status; called by `lifecycle.plan`) and `settle` (the
Restarting condition: recovered, or no node can take a replacement). The node exclusion
itself is written into new pods by `pods.exclude_nodes`.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from gaudi_operator.api import (
    GAUDI_RESOURCE,
    FailureAction,
    FailurePolicy,
    FailureReason,
    LastFailure,
    RestartStrategy,
    parse_rfc3339,
    to_rfc3339,
)
from gaudi_operator.failover.progress import Progress

# Exponential backoff never waits longer than this (unless backoffSeconds itself is
# larger): a job that crash-loops should still come back within minutes once fixed.
MAX_BACKOFF_SECONDS = 300

# Reasons that blame the node, not the program: with excludeFailedNodes the replacement
# must avoid it. Evictions and preemptions are about capacity, not a broken machine.
NODE_FAULT_REASONS = frozenset(
    {FailureReason.NODE_LOST, FailureReason.HPU_UNHEALTHY, FailureReason.SCALE_OUT_LINK_DOWN}
)

# The pod's DisruptionTarget condition (Kubernetes >= 1.26) names who is taking it away.
_DISRUPTION_REASONS: Mapping[str, FailureReason] = {
    "PreemptionByScheduler": FailureReason.PREEMPTED,
    "EvictionByEvictionAPI": FailureReason.EVICTED,
    "TerminationByKubelet": FailureReason.EVICTED,  # node-pressure eviction
    "DeletionByTaintManager": FailureReason.NODE_LOST,  # NoExecute taint of a dead node
    "DeletionByPodGC": FailureReason.NODE_LOST,  # its node object is gone
}


@dataclass(frozen=True)
class Failure:
    """One observed failure of one worker (or of the whole job, for a stall)."""

    reason: FailureReason
    time: datetime  # when it happened (not when we noticed): backoff counts from here
    pod: str | None = None
    node: str | None = None
    worker_index: int | None = None
    exit_code: int | None = None
    message: str = ""
    uid: str | None = None  # the failed pod's uid (RecreateFailed records it: `step`)

    @property
    def node_at_fault(self) -> bool:
        return self.reason in NODE_FAULT_REASONS and bool(self.node)

    def to_last_failure(self) -> LastFailure:
        return LastFailure(
            reason=self.reason.value,
            pod=self.pod,
            node=self.node,
            exit_code=self.exit_code,
            message=self.message or None,
            time=to_rfc3339(self.time),
        )

    def describe(self) -> str:
        who = self.pod or "the job"
        where = f" on node {self.node}" if self.node else ""
        code = f" (exit code {self.exit_code})" if self.exit_code is not None else ""
        detail = f": {self.message}" if self.message else ""
        return f"{who}{where} failed with {self.reason.value}{code}{detail}"


# --- pods -------------------------------------------------------------------------------


class PodFacts(Protocol):
    """What classification needs to know of a worker pod (`lifecycle.WorkerPod`)."""

    @property
    def name(self) -> str: ...
    @property
    def uid(self) -> str: ...
    @property
    def index(self) -> int | None: ...
    @property
    def phase(self) -> str: ...
    @property
    def deleting(self) -> bool: ...
    @property
    def node(self) -> str | None: ...
    @property
    def exit_code(self) -> int | None: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def message(self) -> str | None: ...
    @property
    def disruption(self) -> str | None: ...
    @property
    def finished_at(self) -> datetime | None: ...
    @property
    def started_at(self) -> datetime | None: ...
    @property
    def unschedulable_since(self) -> datetime | None: ...


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def classify_pod(pod: PodFacts, now: datetime) -> Failure | None:
    """A worker pod that failed or is being taken away; None for a healthy one.

    Order matters: a DisruptionTarget condition explains an exit code (a preempted
    pod's container dies of SIGTERM, exit 143), so it wins over the exit code.
    """
    code = pod.exit_code
    if pod.disruption:
        reason = _DISRUPTION_REASONS.get(pod.disruption, FailureReason.EVICTED)
        msg = f"{pod.disruption}: {pod.message}" if pod.message else pod.disruption
        return Failure(reason, now, pod.name, pod.node, pod.index, code, msg, pod.uid)
    if pod.phase == "Failed":
        when = pod.finished_at or now
        if pod.reason == "Evicted":  # kubelet node-pressure eviction (no condition)
            msg = pod.message or "evicted by the kubelet"
            return Failure(
                FailureReason.EVICTED, when, pod.name, pod.node, pod.index, code, msg, pod.uid
            )
        if pod.reason == "Preempting":
            msg = pod.message or "preempted by a higher-priority pod"
            return Failure(
                FailureReason.PREEMPTED, when, pod.name, pod.node, pod.index, code, msg, pod.uid
            )
        if pod.reason == "OOMKilled":
            msg = "the container ran out of memory (OOMKilled)"
            return Failure(
                FailureReason.OOM_KILLED, when, pod.name, pod.node, pod.index, code, msg, pod.uid
            )
        if code is not None and code > 128:
            msg = f"killed by {_signal_name(code - 128)}"
        else:
            msg = pod.message or pod.reason or ""
        return Failure(FailureReason.ERROR, when, pod.name, pod.node, pod.index, code, msg, pod.uid)
    if pod.deleting and pod.phase in ("Pending", "Running"):
        # The operator deletes only pods it has written off (and skips them here through
        # `Signals.own_deletions`), so a live worker being deleted is someone else's doing.
        return Failure(
            FailureReason.EVICTED,
            now,
            pod.name,
            pod.node,
            pod.index,
            code,
            "the worker pod was deleted by another client",
            pod.uid,
        )
    return None


# --- nodes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeHealth:
    """What a node's object says about the workers on it."""

    name: str
    exists: bool = True
    ready: bool = True
    not_ready_since: datetime | None = None
    not_ready_reason: str = ""
    hpu_capacity: int | None = None
    hpu_allocatable: int | None = None
    unschedulable: bool = False
    # When the operator first saw allocatable below capacity (signals.NodeCache notes it).
    hpus_missing_since: datetime | None = None
    # The HPUs were already missing when the operator first saw the node (at start-up, or
    # a new node): nobody can tell which workers started before the drop.
    hpus_missing_before_seen: bool = False

    @property
    def hpus_missing(self) -> int:
        if self.hpu_capacity is None or self.hpu_allocatable is None:
            return 0
        return max(0, self.hpu_capacity - self.hpu_allocatable)


def _get(obj: Mapping[str, Any] | None, *path: str) -> Any:
    cur: Any = obj
    for key in path:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(key)
    return cur


def _condition(obj: Mapping[str, Any], ctype: str) -> Mapping[str, Any] | None:
    for cond in _get(obj, "status", "conditions") or ():
        if cond.get("type") == ctype:
            return cond
    return None


def _quantity_int(raw: Any) -> int | None:
    try:
        return int(str(raw))
    except (TypeError, ValueError):
        return None


def node_health(
    node: Mapping[str, Any] | None, name: str, hpus_missing_since: datetime | None = None
) -> NodeHealth:
    """Read a Node object (None: the node is gone). `hpus_missing_since` is when the
    operator first saw its allocatable HPUs below capacity (no Kubernetes field says)."""
    if node is None:
        return NodeHealth(name=name, exists=False, ready=False)
    ready = _condition(node, "Ready")
    # No Ready condition yet means the node never reported: treat as not ready.
    is_ready = ready is not None and ready.get("status") == "True"
    since = parse_rfc3339(ready.get("lastTransitionTime")) if ready else None
    return NodeHealth(
        name=name,
        ready=is_ready,
        not_ready_since=None if is_ready else since,
        not_ready_reason="" if is_ready or not ready else (ready.get("reason") or ""),
        hpu_capacity=_quantity_int(_get(node, "status", "capacity", GAUDI_RESOURCE)),
        hpu_allocatable=_quantity_int(_get(node, "status", "allocatable", GAUDI_RESOURCE)),
        unschedulable=bool(_get(node, "spec", "unschedulable")),
        hpus_missing_since=hpus_missing_since,
    )


def node_failure(
    health: NodeHealth, now: datetime, grace_seconds: int, pod_started: datetime | None = None
) -> tuple[FailureReason, datetime, str] | timedelta | None:
    """NodeLost / HPUUnhealthy for the node, None if fine, or how long until the
    NotReady grace runs out (a timedelta: come back then).

    An HPU drop only hits workers that started before it was seen: a worker placed on the
    node afterwards got healthy cards (the device plugin never hands out unhealthy ones).
    A drop that predates the operator's first look at the node hits nobody: after an
    operator restart a long-dead card would otherwise restart every job on its node (a
    worker that did lose its card fails or stalls, and is caught as that)."""
    if not health.exists:
        return FailureReason.NODE_LOST, now, "the node was deleted"
    if not health.ready:
        since = health.not_ready_since or now
        lost_at = since + timedelta(seconds=grace_seconds)
        if now >= lost_at:
            why = f" ({health.not_ready_reason})" if health.not_ready_reason else ""
            return (
                FailureReason.NODE_LOST,
                lost_at,
                f"node NotReady{why} for more than {grace_seconds}s",
            )
        return lost_at - now
    since = health.hpus_missing_since
    if health.hpus_missing_before_seen:
        return None
    if health.hpus_missing and not (pod_started and since and pod_started > since):
        return (
            FailureReason.HPU_UNHEALTHY,
            since or now,
            f"allocatable {GAUDI_RESOURCE} dropped to {health.hpu_allocatable} of "
            f"{health.hpu_capacity} (the device plugin reports unhealthy HPUs)",
        )
    return None


# --- HPU health from the Gaudi exporter --------------------------------------------------


class HpuFaultKind(StrEnum):
    """What the HPU health query found on a card (its `fault` label, docs/gaudi.md)."""

    ECC = "ecc"  # rows with uncorrectable (double-bit) ECC errors pending replacement
    TEMPERATURE = "temperature"  # on-chip temperature at the card's shutdown threshold
    LINK_DOWN = "link"  # a scale-out (external) NIC port went down
    OTHER = "other"  # a custom query's fault without one of the kinds above


@dataclass(frozen=True)
class HpuFault:
    """One faulty card held by one worker pod, as one reading of the health query saw it."""

    kind: HpuFaultKind
    message: str


@dataclass(frozen=True)
class HpuReading:
    """One reading of the operator's HPU health query, for one job's workers.

    Intel's exporter names the pod holding each card (`pod_name`, `pod_namespace`, from the
    kubelet's pod-resources API) as of its last scrape. A reading therefore speaks for a
    worker only once the worker is older than one scrape interval (`min_pod_age`): until
    then a series may still name the previous worker of the same name (workers keep their
    names across restarts), on another node with other cards.
    """

    faults: Mapping[str, Sequence[HpuFault]] = field(default_factory=dict)  # pod name ->
    at: datetime | None = None  # when the query ran
    min_pod_age: float = 0.0


def hpu_failure(pod: PodFacts, reading: HpuReading, replicas: int, now: datetime) -> Failure | None:
    """HPUUnhealthy for a worker holding a card with an ECC, temperature (or custom) fault;
    ScaleOutLinkDown for a worker whose card lost a scale-out port, only when the job has
    more than one worker (a single worker never uses the scale-out network). None when
    the reading says nothing about this worker (yet)."""
    faults = reading.faults.get(pod.name)
    if not faults or reading.at is None:
        return None
    if (
        pod.started_at is None
        or (reading.at - pod.started_at).total_seconds() < reading.min_pod_age
    ):
        return None
    cards = [f for f in faults if f.kind != HpuFaultKind.LINK_DOWN]
    links = [f for f in faults if f.kind == HpuFaultKind.LINK_DOWN] if replicas > 1 else []
    if cards:
        reason, found = FailureReason.HPU_UNHEALTHY, cards
    elif links:
        reason, found = FailureReason.SCALE_OUT_LINK_DOWN, links
    else:
        return None
    message = "; ".join(sorted({f.message for f in found}))
    return Failure(reason, now, pod.name, pod.node, pod.index, None, message, pod.uid)


# --- detection ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Signals:
    """Observations from outside the job's pod list, gathered by `signals.signals_for`."""

    # Node name -> health of the nodes the workers run on (`exists=False`: it is gone);
    # no key: not known yet (never a failure).
    nodes: Mapping[str, NodeHealth] = field(default_factory=dict)
    hpu: HpuReading = field(default_factory=HpuReading)  # the exporter's faults per worker
    gone: Sequence[Failure] = ()  # workers deleted by someone else, no longer listed
    own_deletions: frozenset[str] = frozenset()  # uids the operator deleted itself
    # The training step as the stall clock last read it (None: not reported, or not read
    # yet since the operator started).
    progress: Progress | None = None


@dataclass(frozen=True)
class Detection:
    failures: list[Failure]
    # The earliest moment a not-yet-due failure (a NotReady node in its grace) falls due.
    recheck_after: float | None = None


def placement_failure(
    pods: Sequence[PodFacts], now: datetime, timeout_seconds: int
) -> Failure | timedelta | None:
    """Without gang scheduling a world can be half placed: some workers hold HPUs while
    the rest wait for room that those very workers may be taking (two such jobs deadlock).
    After `timeout_seconds` of that, the world is released, as a failure nobody caused,
    and tried again; or how long until then (come back), or None when all is placed or
    nothing is held."""
    held = [p for p in pods if p.node and p.phase not in ("Succeeded", "Failed")]
    waiting = [p for p in pods if p.unschedulable_since is not None and not p.deleting]
    if timeout_seconds <= 0 or not held or not waiting:
        return None
    first = min(waiting, key=lambda p: p.unschedulable_since or now)
    due = (first.unschedulable_since or now) + timedelta(seconds=timeout_seconds)
    if now < due:
        return due - now
    return Failure(
        FailureReason.PLACEMENT_TIMEOUT,
        due,
        first.name,
        None,
        first.index,
        None,
        f"{len(waiting)} of {len(held) + len(waiting)} workers could not be placed for "
        f"{timeout_seconds}s while {len(held)} held HPUs; releasing them to retry "
        f"(the scheduler says: {first.unschedulable})",
    )


def detect_failures(
    pods: Iterable[PodFacts],
    policy: FailurePolicy,
    now: datetime,
    signals: Signals | None = None,
    stall: Failure | None = None,
    placement_timeout: int = 0,
    replicas: int = 1,
) -> Detection:
    """Every failure among the current generation's worker pods, their nodes and the
    job's progress. One failure per pod: the pod's own state wins over its node's, and
    its node's over its cards'. `replicas` (the job's desired workers) tells whether the
    scale-out network matters."""
    signals = signals or Signals()
    pods = list(pods)
    failures: list[Failure] = []
    recheck: float | None = None
    seen: set[str] = set()
    for pod in pods:
        seen.add(pod.name)
        if pod.uid and pod.uid in signals.own_deletions:
            continue  # already written off by an earlier pass
        if pod.deleting and pod.phase in ("Succeeded", "Failed"):
            continue  # a finished pod on its way out: handled when it finished
        found = classify_pod(pod, now)
        if found is None and pod.node and pod.phase != "Succeeded":
            if pod.node in signals.nodes:
                verdict = node_failure(
                    signals.nodes[pod.node], now, policy.node_failure_grace_seconds, pod.started_at
                )
                if isinstance(verdict, timedelta):
                    secs = verdict.total_seconds()
                    recheck = secs if recheck is None else min(recheck, secs)
                elif verdict is not None:
                    reason, when, msg = verdict
                    found = Failure(reason, when, pod.name, pod.node, pod.index, None, msg, pod.uid)
            if found is None:
                found = hpu_failure(pod, signals.hpu, replicas, now)
        if found is not None:
            failures.append(found)
    failures += [g for g in signals.gone if g.pod not in seen]
    if not failures:  # a worker failure already restarts the world
        placement = placement_failure(pods, now, placement_timeout)
        if isinstance(placement, timedelta):
            secs = placement.total_seconds()
            recheck = secs if recheck is None else min(recheck, secs)
        elif placement is not None:
            failures.append(placement)
    if stall is not None and not failures:
        # A worker failure already explains a stall; count it once.
        failures.append(stall)
    return Detection(failures, recheck)


def stall_failure(
    progress: Progress | None, ready_since: datetime | None, timeout_seconds: int
) -> Failure | None:
    """Stalled when the reads of the progress counter (`failover.progress`, kept by the
    stall clock) show no advance for the timeout, counted from the later of the last advance
    and the world becoming ready. Never before the first step is reported (a job without
    the training metrics, or still loading, is not restarted for it), and never from reads
    that did not happen (Prometheus away)."""
    if timeout_seconds <= 0 or progress is None:
        return None
    if progress.stalled_for(ready_since) < timeout_seconds:
        return None
    start = max(progress.advanced, ready_since) if ready_since else progress.advanced
    return Failure(
        FailureReason.STALLED,
        start + timedelta(seconds=timeout_seconds),
        message=f"training step stuck at {int(progress.step)} for more than {timeout_seconds}s",
    )


# --- rules and decision -------------------------------------------------------------------


def action_for(policy: FailurePolicy, failure: Failure) -> FailureAction:
    """`failurePolicy.rules`, first match wins; no match restarts."""
    for rule in policy.rules:
        # Exit codes are the program's verdict; a disruption's SIGTERM code is not.
        program_exit = failure.reason in (FailureReason.ERROR, FailureReason.OOM_KILLED)
        if rule.exit_codes and program_exit and failure.exit_code in rule.exit_codes:
            return rule.action
        if rule.reasons and failure.reason in rule.reasons:
            return rule.action
    if failure.reason == FailureReason.PLACEMENT_TIMEOUT:
        return FailureAction.RESTART_IGNORE_LIMIT  # nobody's fault: never counted
    return FailureAction.RESTART


def backoff_seconds(base: int, restarts: int) -> float:
    """Delay before restart number `restarts + 1`: base, 2·base, 4·base, … capped."""
    if base <= 0:
        return 0.0
    cap = max(MAX_BACKOFF_SECONDS, base)
    return float(min(cap, base * 2 ** min(restarts, 30)))


class Verdict(StrEnum):
    NONE = "None"  # nothing failed
    WAIT = "Wait"  # failed, restart due later (backoff)
    RESTART = "Restart"
    FAIL = "Fail"


@dataclass
class FailoverDecision:
    verdict: Verdict
    failures: list[Failure] = field(default_factory=list)
    primary: Failure | None = None  # the one recorded in status.lastFailure
    action: FailureAction | None = None
    strategy: RestartStrategy | None = None
    counted: bool = False  # charged against maxRestarts
    restarts: int = 0  # status.restarts after this decision
    # Worker indices to replace (RecreateFailed) — all of them for RecreateAll.
    replace_indices: list[int] = field(default_factory=list)
    pods_to_delete: list[str] = field(default_factory=list)
    excluded_nodes: list[str] = field(default_factory=list)  # full new list
    newly_excluded: list[str] = field(default_factory=list)
    new_generation: bool = False
    requeue_after: float | None = None
    message: str = ""

    @property
    def condition_reason(self) -> str:
        return self.primary.reason.value if self.primary else ""


def decide(
    policy: FailurePolicy,
    failures: Sequence[Failure],
    *,
    restarts: int,
    excluded_nodes: Sequence[str],
    replicas: int,
    now: datetime,
    recheck_after: float | None = None,
    warm_spares: int = 0,
) -> FailoverDecision:
    """Turn this pass's failures into one decision for the whole job. `warm_spares`: spares
    ready to take lost indices (spec.workers.spares, restart in place only)."""
    if not failures:
        return FailoverDecision(
            Verdict.NONE,
            requeue_after=recheck_after,
            restarts=restarts,
            excluded_nodes=list(excluded_nodes),
        )
    ranked = sorted(failures, key=lambda f: f.time)
    actions = [(f, action_for(policy, f)) for f in ranked]
    excluded = list(excluded_nodes)
    newly: list[str] = []
    if policy.exclude_failed_nodes:
        for f in ranked:
            if f.node_at_fault and f.node not in excluded:
                excluded.append(f.node)  # type: ignore[arg-type]
                newly.append(f.node)  # type: ignore[arg-type]
    pods = [f.pod for f in ranked if f.pod]

    fatal = next((f for f, a in actions if a == FailureAction.FAIL), None)
    if fatal is not None:
        return FailoverDecision(
            Verdict.FAIL,
            list(ranked),
            fatal,
            FailureAction.FAIL,
            restarts=restarts,
            pods_to_delete=pods,
            excluded_nodes=excluded,
            newly_excluded=newly,
            message=f"{fatal.describe()}; a failurePolicy rule says Fail",
        )

    counted = any(a == FailureAction.RESTART for _, a in actions)
    primary = next((f for f, a in actions if a == FailureAction.RESTART), ranked[0])
    action = FailureAction.RESTART if counted else FailureAction.RESTART_IGNORE_LIMIT
    if counted and restarts >= policy.max_restarts:
        return FailoverDecision(
            Verdict.FAIL,
            list(ranked),
            primary,
            action,
            restarts=restarts,
            pods_to_delete=pods,
            excluded_nodes=excluded,
            newly_excluded=newly,
            message=(f"{primary.describe()}; maxRestarts ({policy.max_restarts}) already spent"),
        )

    # Backoff damps a crashing program. An infrastructure failure the policy does not count
    # (RestartIgnoreLimit: a lost node, a dead HPU, an eviction) is not the program's
    # fault and its replacement avoids the bad node, so it is replaced at once.
    delay = backoff_seconds(policy.backoff_seconds, restarts) if counted else 0.0
    due = ranked[-1].time + timedelta(seconds=delay)
    wait = (due - now).total_seconds()
    strategy = policy.restart_strategy
    if any(f.worker_index is None for f in ranked):
        # A stall (no pod to blame) means the collective is hung: the world must go.
        strategy = RestartStrategy.RECREATE_ALL
    elif len({f.worker_index for f in ranked}) <= warm_spares:
        # Warm spares take the lost indices and the world re-forms in place around them
        # (jobs.spares): RecreateAll's new world, without recreating a pod.
        strategy = RestartStrategy.RECREATE_FAILED
    if wait > 0:
        return FailoverDecision(
            Verdict.WAIT,
            list(ranked),
            primary,
            action,
            strategy,
            counted,
            restarts,
            excluded_nodes=excluded,
            newly_excluded=newly,
            requeue_after=wait,
            message=f"{primary.describe()}; restarting in {wait:.0f}s (backoff)",
        )

    if strategy == RestartStrategy.RECREATE_ALL:
        indices = list(range(replicas))
    else:
        indices = sorted({f.worker_index for f in ranked if f.worker_index is not None})
    new_restarts = restarts + (1 if counted else 0)
    what = (
        "all workers"
        if strategy == RestartStrategy.RECREATE_ALL
        else ("worker" + ("s " if len(indices) > 1 else " ") + ", ".join(map(str, indices)))
    )
    limit = (
        f"restart {new_restarts}/{policy.max_restarts}"
        if counted
        else ("not counted against maxRestarts")
    )
    return FailoverDecision(
        Verdict.RESTART,
        list(ranked),
        primary,
        action,
        strategy,
        counted,
        new_restarts,
        replace_indices=indices,
        pods_to_delete=pods,
        excluded_nodes=excluded,
        newly_excluded=newly,
        new_generation=strategy == RestartStrategy.RECREATE_ALL,
        message=f"{primary.describe()}; recreating {what} ({strategy.value}, {limit})",
    )


# --- can the replacement be placed? ------------------------------------------------------


def unschedulable_message(pods: Iterable[Any]) -> str | None:
    """The scheduler's own explanation when a worker cannot be placed anywhere, e.g.
    "0/4 nodes are available: 1 node(s) didn't match Pod's node affinity/selector,
    3 Insufficient habana.ai/gaudi". None while every pending worker is schedulable."""
    for pod in pods:
        msg = getattr(pod, "unschedulable", None)
        if msg and pod.phase == "Pending" and not pod.deleting:
            return f"{pod.name}: {msg}"
    return None


# --- one pass: what the reconciler writes down ---------------------------------------------

RESTARTING = "Restarting"  # the condition type (api.ConditionType.RESTARTING)
NO_FEASIBLE_NODE = "NoFeasibleNode"
RECOVERED = "Recovered"
FAIL_BY_RULE = "FailurePolicyRule"
RESTART_LIMIT = "RestartLimitExceeded"


@dataclass
class Outcome:
    """What one pass of failover asks of the lifecycle plan (status is already updated)."""

    decision: FailoverDecision
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    # (status, reason, message) of the Restarting condition, None to leave it alone.
    condition: tuple[bool, str, str] | None = None
    delete: list[str] = field(default_factory=list)  # pod names to delete now
    force_delete: list[str] = field(default_factory=list)  # ... without grace (dead node)
    fail: tuple[str, str] | None = None  # (condition reason, message): the job fails
    restarting: bool = False  # show phase Restarting
    new_failures: list[Failure] = field(default_factory=list)  # first seen in this pass
    hold_create: bool = False  # create no worker in this pass (backoff running)
    # Restart in place (`failover.inplace`): the decision to post to the launchers named
    # in `deliver_to` (a `gaudi_train.control_protocol.Decision`), once the status that
    # records it is written; `in_place` marks an outcome of that path (metrics).
    in_place: bool = False
    deliver: Any = None
    deliver_to: list[str] = field(default_factory=list)

    @property
    def requeue_after(self) -> float | None:
        return self.decision.requeue_after


def _same_failure(a: LastFailure | None, b: Failure) -> bool:
    return (
        a is not None
        and a.pod == b.pod
        and a.reason == b.reason.value
        and a.time == to_rfc3339(b.time)
    )


def step(
    policy: FailurePolicy,
    status: Any,  # api.GaudiTrainingJobStatus, updated in place
    pods: Sequence[PodFacts],
    replicas: int,
    now: datetime,
    signals: Signals | None = None,
    ready_since: datetime | None = None,
    placement_timeout: int = 0,
    warm_spares: int = 0,
) -> Outcome:
    """Detect, decide and record one pass of failover for the current generation's
    in-world workers. `ready_since` (when the world last became all-ready, None when it
    is not) arms stall detection: a world still starting cannot stall."""
    stall = None
    if ready_since is not None and signals is not None:
        stall = stall_failure(signals.progress, ready_since, policy.stall_timeout_seconds)
    found = detect_failures(pods, policy, now, signals, stall, placement_timeout, replicas)
    # A RecreateFailed restart already counted (its intent names the pods it replaces) whose
    # pods are still here: the operator died before deleting them. Finish it, count nothing.
    replaced = set(status.replaced_pods or ())
    resumed = [f for f in found.failures if f.uid and f.uid in replaced]
    decision = decide(
        policy,
        [f for f in found.failures if f not in resumed],
        restarts=status.restarts,
        excluded_nodes=status.excluded_nodes,
        replicas=replicas,
        now=now,
        recheck_after=found.recheck_after,
        warm_spares=warm_spares,
    )
    out = Outcome(decision)
    if resumed:
        _resume_restart(out, status, resumed)
    if decision.verdict == Verdict.NONE or decision.primary is None:
        return out

    primary = decision.primary
    new_failure = not _same_failure(status.last_failure, primary)
    if new_failure:
        out.new_failures = list(decision.failures)
        for f in decision.failures:
            out.events.append(("Warning", "WorkerFailed", f.describe()))
    status.last_failure = primary.to_last_failure()
    for node in decision.newly_excluded:
        out.events.append(
            ("Warning", "NodeExcluded", f"replacement workers will avoid node {node}")
        )
    status.excluded_nodes = decision.excluded_nodes
    on_dead_node = {
        f.pod for f in decision.failures if f.pod and f.reason == FailureReason.NODE_LOST
    }

    if decision.verdict == Verdict.FAIL:
        why = FAIL_BY_RULE if decision.action == FailureAction.FAIL else RESTART_LIMIT
        out.fail = (why, decision.message)
        out.condition = (False, why, decision.message)  # not restarting any more
        out.force_delete = sorted(on_dead_node | set(out.force_delete))
        return out

    out.restarting = True
    out.condition = (True, primary.reason.value, decision.message)
    if decision.verdict == Verdict.WAIT:
        # No replacement during the backoff either: a vanished worker recreated alone
        # would join the old world, which RecreateAll is about to replace.
        out.hold_create = True
        if new_failure:
            out.events.append(("Normal", "RestartBackoff", decision.message))
        return out

    # RESTART: the commit point is the status write (restarts, generation), so a pass
    # that runs again from a stale cache computes the same numbers, not new ones.
    status.restarts = decision.restarts
    if decision.new_generation:
        status.restart_generation += 1
        status.replaced_pods = None  # the whole old generation goes
    else:
        # RecreateFailed keeps the generation: the failed pods' uids are what marks this
        # restart as done if the operator dies before it deletes them.
        uids = {f.uid for f in [*decision.failures, *resumed] if f.uid}
        status.replaced_pods = sorted(uids) or None
    out.events.append(("Normal", "RestartingWorkers", decision.message))
    if decision.new_generation:
        # The lifecycle's surplus rule deletes the old generation; pods on a dead node
        # are deleted without grace, or their names would stay taken for ever.
        out.force_delete = sorted(on_dead_node | set(out.force_delete))
    else:
        out.delete += [p for p in decision.pods_to_delete if p not in on_dead_node]
        out.force_delete = sorted(on_dead_node | set(out.force_delete))
    return out


def _resume_restart(out: Outcome, status: Any, resumed: Sequence[Failure]) -> None:
    """Delete the pods of a restart recorded (and counted) by an earlier pass that did not
    live to delete them; the Restarting condition says so until the world runs again."""
    dead = {f.pod for f in resumed if f.pod and f.reason == FailureReason.NODE_LOST}
    out.delete += [f.pod for f in resumed if f.pod and f.pod not in dead]
    out.force_delete += sorted(dead)
    out.restarting = True
    if out.decision.verdict != Verdict.NONE:
        return  # a new failure decides the condition and the events
    indices = sorted({f.worker_index for f in resumed if f.worker_index is not None})
    what = "worker" + ("s " if len(indices) > 1 else " ") + ", ".join(map(str, indices))
    primary = resumed[0]
    message = (
        f"recreating {what} (RecreateFailed): the restart recorded before the operator "
        f"restarted, counted once (restart {status.restarts})"
    )
    out.condition = (True, primary.reason.value, message)
    out.events.append(("Normal", "RestartingWorkers", message))


def settle(status: Any, pods: Iterable[Any], running: bool) -> tuple[bool, str, str] | None:
    """After the pass: the Restarting condition to write when the restart finished (the
    world runs again) or is stuck (no node can take a replacement)."""
    cond = next((c for c in status.conditions if c.type == RESTARTING), None)
    if cond is None or cond.status != "True":
        return None
    if running:
        return (False, RECOVERED, "all workers are running again")
    stuck = unschedulable_message(pods)
    if stuck:
        excluded = ", ".join(status.excluded_nodes) or "none"
        return (
            True,
            NO_FEASIBLE_NODE,
            f"no node can take the replacement worker (excluded nodes: {excluded}); "
            f"the scheduler says {stuck}",
        )
    return None
