"""The autoscaling decision: pure, HPA-like, and aware that every resize restarts the world.

`decide(spec, state, observation)` returns the replicas to set, why, and the new
`status.autoscaling` state. It never talks to Kubernetes or Prometheus; autoscaler.py
gathers the observation and applies the decision.

One pass, in this order (each step can end it):

1. A manual resize (spec.workers.replicas changed by someone else, e.g. `kubectl scale`)
   is adopted: it starts the cooldown and the loop goes on from the new size.
2. A scale-up under verification: new workers still Pending after
   `pendingTimeoutSeconds` → roll back; all Running for `scaleUp.stabilizationSeconds` →
   compare per-worker throughput with the level before; below `minEfficiency` → roll back.
   A rollback holds the old size as a ceiling for a while (`status.autoscaling.ceiling`).
3. No metric → hold (never scale on missing data).
4. The HPA algorithm (kubernetes.io "Algorithm details"): the ratio of value to target,
   no change within `tolerance`; desired = ceil(value / target) for AverageValue and
   ceil(current x value / target) for Value; the recommendations are kept over each
   direction's stabilisation window and the stabilised value is the lowest of the up
   window (for a scale-up) or the highest of the down window (for a scale-down).
5. Cooldown since the last resize.
6. Limits: `maxStep`, min/max, the held ceiling, free HPUs, and the world sizes that keep
   `batch.globalBatchSize` constant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from gaudi_operator.api import (
    AutoscalingStatus,
    GaudiTrainingJobSpec,
    MetricType,
    ReplicaCeiling,
    ScaleDecision,
    ScaleRecommendation,
    ScaleUpCheck,
    parse_rfc3339,
)
from gaudi_train.batching import valid_replica_counts

# The autoscaler's own query besides the users' metrics: every autoscaled job's throughput
# at once, by the Prometheus namespace label and the launcher's job label.
THROUGHPUT_BY_JOB = "sum by ({label}, gtj) (gaudi3_train_samples_per_second)"

# How long a rolled-back size is held as the ceiling: long enough not to retry the same
# failed scale-up every cooldown, short enough to try again when things change.
MIN_CEILING_HOLD_SECONDS = 600
CEILING_HOLD_COOLDOWNS = 3

# Metric query backoff after failures: interval x 2^(failures-1), capped.
MAX_QUERY_BACKOFF_SECONDS = 300


def stamp(t: datetime) -> str:
    """RFC 3339 in UTC with milliseconds: stabilisation windows of a few seconds need them."""
    t = t.astimezone(UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


class Reason(StrEnum):
    """Why the autoscaler did (or did not) resize. Events and metrics use these."""

    # resizes
    METRIC_ABOVE_TARGET = "MetricAboveTarget"
    METRIC_BELOW_TARGET = "MetricBelowTarget"
    PENDING_TIMEOUT = "PendingTimeout"  # rollback: new workers could not be scheduled
    EFFICIENCY_BELOW_MINIMUM = "EfficiencyBelowMinimum"  # rollback: throughput fell
    # no resize
    MANUAL_SCALE = "ManualScale"
    WITHIN_TOLERANCE = "WithinTolerance"
    STABILIZING = "Stabilizing"
    COOLDOWN = "Cooldown"
    VERIFYING_SCALE_UP = "VerifyingScaleUp"
    SCALE_UP_CONFIRMED = "ScaleUpConfirmed"
    AT_MAX_REPLICAS = "AtMaxReplicas"
    AT_MIN_REPLICAS = "AtMinReplicas"
    CEILING_HELD = "CeilingHeld"
    INSUFFICIENT_CAPACITY = "InsufficientCapacity"
    NO_BATCH_VALID_SIZE = "NoBatchValidSize"
    METRICS_UNAVAILABLE = "MetricsUnavailable"


# "No change" reasons worth an event (the others repeat every pass and say little).
NOTABLE_HOLDS = frozenset(
    {
        Reason.MANUAL_SCALE,
        Reason.SCALE_UP_CONFIRMED,
        Reason.CEILING_HELD,
        Reason.INSUFFICIENT_CAPACITY,
        Reason.NO_BATCH_VALID_SIZE,
        Reason.METRICS_UNAVAILABLE,
    }
)


@dataclass(frozen=True)
class Observation:
    """What the autoscaler saw in one pass."""

    now: datetime
    replicas: int  # spec.workers.replicas (the /scale spec)
    value: float | None = None  # the metric; None when it could not be read
    metric_error: str = ""  # why value is None
    # False when the query was skipped (backing off after failures): keeps the count.
    metric_queried: bool = True
    throughput: float | None = None  # the job's samples/s; None when unknown
    # More workers the cluster can place now (free HPUs on eligible nodes); None = unknown.
    schedulable_workers: int | None = None
    # Workers with index >= the verifying scale-up's "from": how many run, how many wait.
    new_running: int = 0
    new_pending: int = 0


@dataclass(frozen=True)
class Decision:
    replicas: int  # the size to set; == current when nothing changes
    current: int
    reason: Reason
    message: str
    state: AutoscalingStatus
    desired: int | None = None
    value: float | None = None
    # Set when this pass confirmed the last scale-up (then it went on to decide).
    confirmed: str = ""

    @property
    def resize(self) -> bool:
        return self.replicas != self.current

    @property
    def direction(self) -> str:
        if self.replicas > self.current:
            return "up"
        if self.replicas < self.current:
            return "down"
        return "none"

    @property
    def rollback(self) -> bool:
        return self.reason in (Reason.PENDING_TIMEOUT, Reason.EFFICIENCY_BELOW_MINIMUM)


# --- the HPA formula and stabilisation -------------------------------------------------


def within_tolerance(
    current: int, value: float, target: float, metric_type: MetricType, tolerance: float
) -> bool:
    if target <= 0:
        raise ValueError("spec.autoscaling.metric.target must be > 0")
    per = value / current if metric_type == MetricType.AVERAGE_VALUE else value
    return abs(per / target - 1.0) <= tolerance


def raw_recommendation(
    current: int, value: float, target: float, metric_type: MetricType, tolerance: float
) -> int:
    """The HPA ratio: current when within tolerance, else the size that meets the target
    (unbounded: min/max apply after stabilisation, as in the HPA)."""
    if within_tolerance(current, value, target, metric_type, tolerance):
        return current
    if metric_type == MetricType.AVERAGE_VALUE:
        return max(0, math.ceil(value / target))
    return max(0, math.ceil(current * value / target))


def stabilize(
    current: int,
    recommendations: list[ScaleRecommendation],
    now: datetime,
    up_window: int,
    down_window: int,
) -> int:
    """HPA stabilisation: scale up only to the lowest recommendation of the up window,
    down only to the highest of the down window (both include the newest one)."""
    up = down = None
    for rec in recommendations:
        t = parse_rfc3339(rec.time)
        if t is None:
            continue
        age = (now - t).total_seconds()
        if age <= up_window:
            up = rec.replicas if up is None else min(up, rec.replicas)
        if age <= down_window:
            down = rec.replicas if down is None else max(down, rec.replicas)
    result = current
    if up is not None and result < up:
        result = up
    if down is not None and result > down:
        result = down
    return result


def _prune(recs: list[ScaleRecommendation], now: datetime, keep: int) -> list[ScaleRecommendation]:
    out = []
    for r in recs:
        t = parse_rfc3339(r.time)
        if t is not None and (now - t).total_seconds() <= keep:
            out.append(r)
    return out


def batch_valid_replicas(spec: GaudiTrainingJobSpec) -> list[int] | None:
    """Worker counts within min..max that keep the global batch size; None = any."""
    if spec.batch is None:
        return None
    w = spec.workers
    return valid_replica_counts(
        spec.batch.global_batch_size,
        spec.batch.micro_batch_size,
        spec.hpus_per_worker,
        w.min,
        w.max,
    )


def query_backoff_seconds(failures: int, interval: float) -> float:
    """Delay before the next metric query after `failures` failures in a row."""
    if failures <= 0:
        return interval
    return min(interval * 2 ** (failures - 1), MAX_QUERY_BACKOFF_SECONDS)


def ceiling_hold_seconds(spec: GaudiTrainingJobSpec) -> int:
    return max(MIN_CEILING_HOLD_SECONDS, CEILING_HOLD_COOLDOWNS * spec.autoscaling.cooldown_seconds)


# --- the pass --------------------------------------------------------------------------


def decide(
    spec: GaudiTrainingJobSpec,
    state: AutoscalingStatus | None,
    obs: Observation,
    interval: float = 10.0,
) -> Decision:
    """One autoscaling pass. `interval` is the loop period (for the query backoff)."""
    a = spec.autoscaling
    # Work at the precision status keeps (ms), so a recommendation made now has age 0.
    obs = replace(obs, now=obs.now.replace(microsecond=obs.now.microsecond // 1000 * 1000))
    now = obs.now
    current = obs.replicas
    st = (state or AutoscalingStatus()).model_copy(deep=True)
    now_s = stamp(now)

    confirmed = ""

    def done(
        reason: Reason, message: str, replicas: int = current, desired: int | None = None
    ) -> Decision:
        st.desired_replicas = desired if desired is not None else st.desired_replicas
        st.last_decision = ScaleDecision(
            time=now_s,
            current=current,
            desired=desired,
            replicas=replicas,
            reason=reason.value,
            message=message,
            value=obs.value,
        )
        if replicas != current:
            st.applied_replicas = replicas
            st.last_resize_time = now_s
        return Decision(
            replicas=replicas,
            current=current,
            reason=reason,
            message=message,
            state=st,
            desired=desired,
            value=obs.value,
            confirmed=confirmed,
        )

    # Expired ceilings go away.
    if st.ceiling is not None:
        until = parse_rfc3339(st.ceiling.until)
        if until is None or now >= until:
            st.ceiling = None

    # Metric bookkeeping first, so every exit below keeps it right.
    if obs.value is None:
        if obs.metric_queried:
            st.query_failures += 1
            st.last_error = obs.metric_error or "no metric value"
            st.next_query_time = stamp(
                now + timedelta(seconds=query_backoff_seconds(st.query_failures, interval))
            )
    else:
        st.query_failures = 0
        st.next_query_time = None
        st.last_error = None
        st.value = obs.value

    # 1. The first pass, or somebody else resized: adopt the size, start from there.
    if st.applied_replicas is None:
        st.applied_replicas = current
        # Seed both windows with the current size: a freshly enabled loop waits a whole
        # window before it moves, like one that has been watching all along.
        st.recommendations = [ScaleRecommendation(replicas=current, time=now_s)]
    elif st.applied_replicas != current:
        before = st.applied_replicas
        st.applied_replicas = current
        st.last_resize_time = now_s
        st.verifying = None
        st.recommendations = [ScaleRecommendation(replicas=current, time=now_s)]
        return done(
            Reason.MANUAL_SCALE,
            f"spec.workers.replicas changed from {before} to {current} outside the "
            f"autoscaler (kubectl scale?); adopted, cooldown of "
            f"{a.cooldown_seconds}s starts now",
        )

    # 2. A scale-up under verification.
    if st.verifying is not None:
        verdict = _verify_scale_up(spec, st, obs)
        if verdict is not None:
            reason, message, replicas = verdict
            if reason == Reason.SCALE_UP_CONFIRMED:
                confirmed = message  # kept: go on and decide in this same pass
            else:
                if replicas != current:
                    st.recommendations = [ScaleRecommendation(replicas=replicas, time=now_s)]
                return done(reason, message, replicas)

    # 3. Never scale on missing data.
    if obs.value is None:
        return done(
            Reason.METRICS_UNAVAILABLE,
            f"holding {current} workers: {obs.metric_error or 'no metric value'}",
        )

    # 4. The HPA formula, recorded and stabilised.
    try:
        raw = raw_recommendation(current, obs.value, a.metric.target, a.metric.type, a.tolerance)
    except ValueError as e:
        return done(Reason.METRICS_UNAVAILABLE, str(e))
    up_w, down_w = a.scale_up.stabilization_seconds, a.scale_down.stabilization_seconds
    st.recommendations = _prune(st.recommendations, now, max(up_w, down_w))
    if st.recommendations and st.recommendations[-1].replicas == raw:
        # A run of equal recommendations only matters by its newest time (a sliding min or
        # max over a window that includes now): keep one entry, the list stays short.
        st.recommendations[-1].time = now_s
    else:
        st.recommendations.append(ScaleRecommendation(replicas=raw, time=now_s))
    desired = stabilize(current, st.recommendations, now, up_w, down_w)
    what = _describe_metric(spec, obs.value, current)

    if desired == current:
        if within_tolerance(current, obs.value, a.metric.target, a.metric.type, a.tolerance):
            return done(
                Reason.WITHIN_TOLERANCE,
                f"{what}: within tolerance {a.tolerance:g}",
                desired=desired,
            )
        if raw == current:  # off target, but rounding lands on the current size
            return done(
                Reason.WITHIN_TOLERANCE, f"{what}: {current} is the nearest size", desired=desired
            )
        window = up_w if raw > current else down_w
        return done(
            Reason.STABILIZING,
            f"{what}: asks for {raw} workers; waiting for it to hold over the "
            f"{window}s stabilisation window",
            desired=desired,
        )

    # 5. Cooldown.
    last = parse_rfc3339(st.last_resize_time)
    if last is not None and (now - last).total_seconds() < a.cooldown_seconds:
        left = a.cooldown_seconds - (now - last).total_seconds()
        return done(
            Reason.COOLDOWN,
            f"{what}: wants {desired} workers; cooldown has {left:.0f}s left",
            desired=desired,
        )

    # 6. Limits.
    if desired > current:
        replicas, reason, message = _limit_up(spec, st, obs, desired, what)
    else:
        replicas, reason, message = _limit_down(spec, current, desired, what)
    if replicas > current:
        st.verifying = ScaleUpCheck(
            from_=current,
            to=replicas,
            time=now_s,
            baseline_per_worker=(
                obs.throughput / current if obs.throughput is not None and current else None
            ),
        )
    return done(reason, message, replicas, desired=desired)


def _describe_metric(spec: GaudiTrainingJobSpec, value: float, current: int) -> str:
    m = spec.autoscaling.metric
    if m.type == MetricType.AVERAGE_VALUE:
        return (
            f"metric {value:g} over {current} workers = {value / current:g} per worker "
            f"(target {m.target:g})"
        )
    return f"metric {value:g} (target {m.target:g})"


def _limit_up(
    spec: GaudiTrainingJobSpec, st: AutoscalingStatus, obs: Observation, desired: int, what: str
) -> tuple[int, Reason, str]:
    a, current = spec.autoscaling, obs.replicas
    limit, bound = current + a.scale_up.max_step, f"scaleUp.maxStep {a.scale_up.max_step}"
    notes = []
    caps: list[tuple[int, Reason, str]] = [
        (spec.workers.max, Reason.AT_MAX_REPLICAS, f"maxReplicas {spec.workers.max}"),
    ]
    if st.ceiling is not None:
        caps.append(
            (
                st.ceiling.replicas,
                Reason.CEILING_HELD,
                f"ceiling {st.ceiling.replicas} held until {st.ceiling.until} "
                f"({st.ceiling.reason})",
            )
        )
    if obs.schedulable_workers is not None:
        caps.append(
            (
                current + obs.schedulable_workers,
                Reason.INSUFFICIENT_CAPACITY,
                f"free HPUs fit {obs.schedulable_workers} more worker(s) of "
                f"{spec.hpus_per_worker} HPUs",
            )
        )
    blocker = Reason.AT_MAX_REPLICAS
    for cap, reason, text in caps:
        if cap < limit:
            limit, bound, blocker = cap, text, reason
    if limit <= current:
        return current, blocker, f"{what}: wants {desired} workers; held at {current} by {bound}"
    valid = batch_valid_replicas(spec)
    candidates = [r for r in range(current + 1, limit + 1) if valid is None or r in valid]
    if not candidates:
        return _no_batch_valid_size(spec, current, desired, current + 1, limit, what)
    enough = [r for r in candidates if r >= desired]
    replicas = min(enough) if enough else max(candidates)
    if replicas < desired:
        notes.append(f"capped by {bound}")
    if valid is not None and replicas != min(desired, limit):
        notes.append(f"{replicas} keeps globalBatchSize")
    suffix = f" ({'; '.join(notes)})" if notes else ""
    return (
        replicas,
        Reason.METRIC_ABOVE_TARGET,
        (f"{what}: scaling up from {current} to {replicas} workers (wants {desired}){suffix}"),
    )


def _no_batch_valid_size(
    spec: GaudiTrainingJobSpec, current: int, desired: int, lo: int, hi: int, what: str
) -> tuple[int, Reason, str]:
    """Hold: every size the step allows would change the global batch."""
    b = spec.batch
    assert b is not None
    return (
        current,
        Reason.NO_BATCH_VALID_SIZE,
        f"{what}: wants {desired} workers; no size in {lo}..{hi} keeps "
        f"globalBatchSize {b.global_batch_size} (valid: {batch_valid_replicas(spec)})",
    )


def _limit_down(
    spec: GaudiTrainingJobSpec, current: int, desired: int, what: str
) -> tuple[int, Reason, str]:
    a = spec.autoscaling
    low = max(current - a.scale_down.max_step, spec.workers.min)
    if low >= current:
        return (
            current,
            Reason.AT_MIN_REPLICAS,
            (f"{what}: wants {desired} workers; held at minReplicas {spec.workers.min}"),
        )
    valid = batch_valid_replicas(spec)
    candidates = [r for r in range(low, current) if valid is None or r in valid]
    if not candidates:
        return _no_batch_valid_size(spec, current, desired, low, current - 1, what)
    # Do not undershoot: the smallest valid size that still meets the desire.
    enough = [r for r in candidates if r >= desired]
    replicas = min(enough) if enough else max(candidates)
    note = f" (capped by scaleDown.maxStep {a.scale_down.max_step})" if replicas > desired else ""
    return (
        replicas,
        Reason.METRIC_BELOW_TARGET,
        (f"{what}: scaling down from {current} to {replicas} workers (wants {desired}){note}"),
    )


def _roll_back(
    st: AutoscalingStatus, to: int, hold_until: datetime, reason: Reason, msg: str
) -> tuple[Reason, str, int]:
    """Go back to the size before the scale-up and hold it as the ceiling for a while."""
    st.ceiling = ReplicaCeiling(
        replicas=to, until=stamp(hold_until), reason=reason.value, message=msg
    )
    return reason, msg, to


def _verify_scale_up(
    spec: GaudiTrainingJobSpec, st: AutoscalingStatus, obs: Observation
) -> tuple[Reason, str, int] | None:
    """The verdict on a scale-up under check, or None when it is confirmed (go on)."""
    a, now, v = spec.autoscaling, obs.now, st.verifying
    assert v is not None
    applied = parse_rfc3339(v.time) or now
    added = v.to - v.from_
    if obs.replicas != v.to:  # resized since (manual scale is caught earlier); drop the check
        st.verifying = None
        return None
    hold = timedelta(seconds=ceiling_hold_seconds(spec))
    if obs.new_running < added:
        waited = (now - applied).total_seconds()
        if obs.new_pending and waited >= a.pending_timeout_seconds:
            st.verifying = None
            msg = (
                f"{obs.new_pending} of {added} new worker(s) still Pending after "
                f"{waited:.0f}s (pendingTimeoutSeconds {a.pending_timeout_seconds}): "
                f"the cluster cannot place them; rolling back from {v.to} to {v.from_}"
            )
            return _roll_back(st, v.from_, now + hold, Reason.PENDING_TIMEOUT, msg)
        return (
            Reason.VERIFYING_SCALE_UP,
            (
                f"scale-up {v.from_}->{v.to}: {obs.new_running} of {added} new worker(s) "
                f"running, waiting"
            ),
            obs.replicas,
        )
    if v.running_since is None:
        v.running_since = stamp(now)
    running_for = (now - (parse_rfc3339(v.running_since) or now)).total_seconds()
    settle = a.scale_up.stabilization_seconds
    if v.baseline_per_worker is None or a.min_efficiency <= 0:
        st.verifying = None
        return (
            Reason.SCALE_UP_CONFIRMED,
            (
                f"scale-up {v.from_}->{v.to}: all new workers running (no throughput baseline, "
                f"efficiency not checked)"
            ),
            obs.replicas,
        )
    if running_for < settle:
        return (
            Reason.VERIFYING_SCALE_UP,
            (
                f"scale-up {v.from_}->{v.to}: all workers running; measuring throughput after "
                f"{settle}s (scaleUp.stabilizationSeconds), {settle - running_for:.0f}s left"
            ),
            obs.replicas,
        )
    if obs.throughput is None:
        return (
            Reason.VERIFYING_SCALE_UP,
            (f"scale-up {v.from_}->{v.to}: waiting for a throughput reading"),
            obs.replicas,
        )
    per_worker = obs.throughput / v.to
    efficiency = per_worker / v.baseline_per_worker if v.baseline_per_worker > 0 else 1.0
    st.verifying = None
    if efficiency < a.min_efficiency:
        msg = (
            f"per-worker throughput fell from {v.baseline_per_worker:.4g} to "
            f"{per_worker:.4g} samples/s ({efficiency:.0%} < minEfficiency "
            f"{a.min_efficiency:.0%}) after scaling {v.from_}->{v.to}; rolling back "
            f"to {v.from_} and holding it as the ceiling"
        )
        return _roll_back(st, v.from_, now + hold, Reason.EFFICIENCY_BELOW_MINIMUM, msg)
    return (
        Reason.SCALE_UP_CONFIRMED,
        (
            f"scale-up {v.from_}->{v.to} kept: per-worker throughput {per_worker:.4g} samples/s "
            f"is {efficiency:.0%} of {v.baseline_per_worker:.4g} before"
        ),
        obs.replicas,
    )


# --- what status records ----------------------------------------------------------------


def decision_record(state: AutoscalingStatus | None) -> tuple[object, ...]:
    """The part of the autoscaler's state that `status.autoscaling` is written for: the
    decision (why, and the size it keeps or sets), a resize, a check or a ceiling, and
    whether the metric can be read. Not the metric's value, what it asks for (`desired`,
    which follows every wobble of a noisy metric while the size holds), the
    recommendations or the backoff's count: those change every pass and live in memory
    (and in `gaudi_operator_autoscale_desired_replicas`), so a job at rest costs no write."""
    if state is None:
        return ()
    d = state.last_decision
    return (
        state.applied_replicas,
        state.last_resize_time,
        state.verifying.model_dump() if state.verifying else None,
        state.ceiling.model_dump() if state.ceiling else None,
        state.pending_resize.model_dump() if state.pending_resize else None,
        (d.reason, d.current, d.replicas) if d else None,
        state.query_failures > 0,
    )


def worth_writing(written: AutoscalingStatus | None, new: AutoscalingStatus) -> bool:
    """Whether the new state must reach status: only when the decision changed."""
    return decision_record(written) != decision_record(new)


def resume(state: AutoscalingStatus, now: datetime) -> AutoscalingStatus:
    """The state read back from status by a process that did not make it (a restart, a new
    leader). Status was written when the decision last changed, and every pass since decided
    the same, so the newest recommendation is taken to have held until now: exact while the
    decision is WithinTolerance (its recommendation is the current size), and the same
    direction while Stabilizing. Without this, a recommendation as old as the last decision
    change would fall out of its window, and a restarted loop could resize at once on a
    window it never watched; with it, a window that was running goes on from its start."""
    if not state.recommendations:
        return state  # never decided: `decide` seeds it
    out = state.model_copy(deep=True)
    out.recommendations[-1].time = stamp(now)
    return out
