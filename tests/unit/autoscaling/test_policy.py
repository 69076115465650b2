"""The pure autoscaling decision: HPA formula, tolerance, windows, steps, cooldown, bounds,
batch-valid sizes, capacity, pending rollback and the efficiency guard."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gaudi_operator.api import (
    AutoscalingStatus,
    GaudiTrainingJobSpec,
    MetricType,
    ScaleRecommendation,
)
from gaudi_operator.autoscaling.policy import (
    Observation,
    Reason,
    batch_valid_replicas,
    decide,
    query_backoff_seconds,
    raw_recommendation,
    resume,
    stabilize,
    stamp,
    worth_writing,
)

T0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)


def spec(replicas: int = 2, **autoscaling: Any) -> GaudiTrainingJobSpec:
    extra = autoscaling.pop("spec", {})
    a = {
        "enabled": True,
        "metric": {"query": "sum(x)", "target": 100, "type": "AverageValue"},
        "tolerance": 0.1,
        "cooldownSeconds": 0,
        "scaleUp": {"stabilizationSeconds": 0, "maxStep": 2},
        "scaleDown": {"stabilizationSeconds": 0, "maxStep": 1},
        "minEfficiency": 0.7,
        "pendingTimeoutSeconds": 60,
        **autoscaling,
    }
    return GaudiTrainingJobSpec.model_validate(
        {
            "image": "img",
            "hpusPerWorker": 8,
            "workers": {"replicas": replicas, "minReplicas": 1, "maxReplicas": 8},
            "autoscaling": a,
            **extra,
        }
    )


def settled(replicas: int) -> AutoscalingStatus:
    """A loop that has been watching for a while at `replicas` workers."""
    return AutoscalingStatus(applied_replicas=replicas)


def obs(replicas: int, value: float | None, at: float = 0, **kw: Any) -> Observation:
    return Observation(now=T0 + timedelta(seconds=at), replicas=replicas, value=value, **kw)


# --- formula -----------------------------------------------------------------------------


def test_average_value_desired_is_ceil_of_value_over_target() -> None:
    assert raw_recommendation(2, 450, 100, MetricType.AVERAGE_VALUE, 0.1) == 5


def test_value_form_scales_current_by_ratio() -> None:
    assert raw_recommendation(4, 150, 100, MetricType.VALUE, 0.1) == 6
    assert raw_recommendation(4, 40, 100, MetricType.VALUE, 0.1) == 2


def test_ratio_within_tolerance_keeps_current() -> None:
    assert raw_recommendation(4, 430, 100, MetricType.AVERAGE_VALUE, 0.1) == 4
    assert raw_recommendation(4, 360, 100, MetricType.AVERAGE_VALUE, 0.1) == 4


def test_value_within_tolerance_changes_nothing() -> None:
    d = decide(spec(2), settled(2), obs(2, 210))
    assert not d.resize and d.reason == Reason.WITHIN_TOLERANCE


# --- steps, bounds -----------------------------------------------------------------------


def test_high_load_scales_up_by_at_most_max_step() -> None:
    d = decide(spec(2), settled(2), obs(2, 10_000))
    assert d.replicas == 4 and d.reason == Reason.METRIC_ABOVE_TARGET
    assert d.state.verifying is not None and d.state.verifying.from_ == 2
    assert d.state.last_resize_time == stamp(T0)


def test_scale_up_stops_at_max_replicas() -> None:
    d = decide(spec(8), settled(8), obs(8, 10_000))
    assert not d.resize and d.reason == Reason.AT_MAX_REPLICAS


def test_scale_down_by_at_most_max_step_and_not_below_min() -> None:
    d = decide(spec(4), settled(4), obs(4, 10))
    assert d.replicas == 3 and d.reason == Reason.METRIC_BELOW_TARGET
    d = decide(spec(1), settled(1), obs(1, 0))
    assert not d.resize and d.reason == Reason.AT_MIN_REPLICAS


# --- stabilisation -----------------------------------------------------------------------


def test_stabilize_takes_lowest_up_and_highest_down() -> None:
    recs = [
        ScaleRecommendation(replicas=r, time=stamp(T0 + timedelta(seconds=s)))
        for r, s in [(6, 0), (5, 10), (7, 20)]
    ]
    now = T0 + timedelta(seconds=20)
    assert stabilize(4, recs, now, up_window=30, down_window=30) == 5
    assert stabilize(8, recs, now, up_window=30, down_window=30) == 7
    assert stabilize(8, recs, now, up_window=30, down_window=5) == 7
    assert stabilize(4, recs, now, up_window=5, down_window=30) == 7


def test_zero_windows_act_at_once_whatever_the_clock_precision() -> None:
    d = decide(spec(2), settled(2), obs(2, 10_000, at=0.123456))
    assert d.replicas == 4


def test_low_load_scales_down_only_after_its_window() -> None:
    s = spec(4, scaleDown={"stabilizationSeconds": 30, "maxStep": 1})
    state = decide(s, None, obs(4, 400, at=0)).state  # first pass seeds the windows
    for t in (5, 15, 29):
        d = decide(s, state, obs(4, 100, at=t))
        assert not d.resize and d.reason == Reason.STABILIZING, t
        state = d.state
    d = decide(s, state, obs(4, 100, at=31))
    assert d.replicas == 3


def test_freshly_enabled_loop_waits_a_window_before_scaling_up() -> None:
    s = spec(2, scaleUp={"stabilizationSeconds": 20, "maxStep": 2})
    d = decide(s, None, obs(2, 1000, at=0))
    assert not d.resize and d.reason == Reason.STABILIZING
    d = decide(s, d.state, obs(2, 1000, at=21))
    assert d.replicas == 4


def test_recommendations_survive_in_status_round_trip() -> None:
    s = spec(4, scaleDown={"stabilizationSeconds": 30, "maxStep": 1})
    state = decide(s, None, obs(4, 400, at=0)).state
    # The state is what status.autoscaling holds: a restarted operator reads it back.
    wire = state.to_dict()
    again = AutoscalingStatus.model_validate(wire)
    assert not decide(s, again, obs(4, 100, at=10)).resize


# --- cooldown, manual resize ------------------------------------------------------------


def test_no_second_resize_inside_cooldown() -> None:
    s = spec(2, cooldownSeconds=60)
    d1 = decide(s, settled(2), obs(2, 10_000, at=0))
    assert d1.replicas == 4
    # The scale-up is confirmed (no throughput baseline) and the cooldown holds.
    d2 = decide(s, d1.state, obs(4, 10_000, at=5, new_running=2))
    assert d2.confirmed and d2.reason == Reason.COOLDOWN
    d3 = decide(s, d2.state, obs(4, 10_000, at=30))
    assert not d3.resize and d3.reason == Reason.COOLDOWN
    d4 = decide(s, d3.state, obs(4, 10_000, at=61))
    assert d4.replicas == 6


def test_kubectl_scale_is_adopted_and_starts_cooldown() -> None:
    s = spec(3, cooldownSeconds=60)
    d = decide(s, settled(2), obs(3, 10, at=0))
    assert not d.resize and d.reason == Reason.MANUAL_SCALE
    assert d.state.applied_replicas == 3
    d = decide(s, d.state, obs(3, 10, at=10))
    assert not d.resize and d.reason == Reason.COOLDOWN


# --- missing data -----------------------------------------------------------------------


def test_missing_metric_holds_and_backs_off() -> None:
    d = decide(spec(2), settled(2), obs(2, None, metric_error="Prometheus down"), interval=5)
    assert not d.resize and d.reason == Reason.METRICS_UNAVAILABLE
    assert "Prometheus down" in d.message
    assert d.state.query_failures == 1
    d = decide(spec(2), d.state, obs(2, None, at=5), interval=5)
    assert d.state.query_failures == 2
    assert d.state.next_query_time == stamp(T0 + timedelta(seconds=15))
    skipped = decide(spec(2), d.state, obs(2, None, at=6, metric_queried=False), interval=5)
    assert skipped.state.query_failures == 2
    d = decide(spec(2), d.state, obs(2, 10_000, at=20), interval=5)
    assert d.state.query_failures == 0 and d.replicas == 4


def test_query_backoff_doubles_and_caps() -> None:
    assert [query_backoff_seconds(n, 5) for n in (1, 2, 3)] == [5, 10, 20]
    assert query_backoff_seconds(20, 5) == 300


# --- batch ------------------------------------------------------------------------------


def test_batch_valid_sizes_keep_global_batch() -> None:
    s = spec(2, spec={"hpusPerWorker": 2, "batch": {"globalBatchSize": 96, "microBatchSize": 8}})
    assert batch_valid_replicas(s) == [1, 2, 3, 6]


def test_scale_up_skips_sizes_that_break_the_global_batch() -> None:
    s = spec(
        3,
        scaleUp={"stabilizationSeconds": 0, "maxStep": 3},
        spec={"hpusPerWorker": 2, "batch": {"globalBatchSize": 96, "microBatchSize": 8}},
    )
    d = decide(s, settled(3), obs(3, 500))  # wants 5: 4 and 5 break 96, 6 keeps it
    assert d.replicas == 6


def test_no_batch_valid_size_within_step_holds() -> None:
    s = spec(
        3,
        scaleUp={"stabilizationSeconds": 0, "maxStep": 2},
        spec={"hpusPerWorker": 2, "batch": {"globalBatchSize": 96, "microBatchSize": 8}},
    )
    d = decide(s, settled(3), obs(3, 500))
    assert not d.resize and d.reason == Reason.NO_BATCH_VALID_SIZE
    assert "96" in d.message


def test_scale_down_picks_a_batch_valid_size() -> None:
    s = spec(
        6,
        scaleDown={"stabilizationSeconds": 0, "maxStep": 4},
        spec={"hpusPerWorker": 2, "batch": {"globalBatchSize": 96, "microBatchSize": 8}},
    )
    d = decide(s, settled(6), obs(6, 150))  # wants 2; 2 keeps 96
    assert d.replicas == 2
    d = decide(s, settled(6), obs(6, 250))  # wants 3
    assert d.replicas == 3


# --- capacity and pending ---------------------------------------------------------------


def test_scale_up_capped_to_free_capacity() -> None:
    s = spec(2, scaleUp={"stabilizationSeconds": 0, "maxStep": 4})
    d = decide(s, settled(2), obs(2, 10_000, schedulable_workers=1))
    assert d.replicas == 3 and "free HPUs" in d.message
    d = decide(s, settled(2), obs(2, 10_000, schedulable_workers=0))
    assert not d.resize and d.reason == Reason.INSUFFICIENT_CAPACITY


def test_pending_new_workers_roll_back_after_timeout() -> None:
    s = spec(2, pendingTimeoutSeconds=60)
    d = decide(s, settled(2), obs(2, 10_000, at=0, throughput=200))
    assert d.replicas == 4
    d = decide(s, d.state, obs(4, 10_000, at=30, new_running=1, new_pending=1))
    assert not d.resize and d.reason == Reason.VERIFYING_SCALE_UP
    d = decide(s, d.state, obs(4, 10_000, at=61, new_running=1, new_pending=1))
    assert d.replicas == 2 and d.reason == Reason.PENDING_TIMEOUT and d.rollback
    assert "Pending" in d.message
    assert d.state.ceiling is not None and d.state.ceiling.replicas == 2
    # The ceiling holds the size even though the load is still high.
    d = decide(s, d.state, obs(2, 10_000, at=70))
    assert not d.resize and d.reason == Reason.CEILING_HELD


# --- efficiency -------------------------------------------------------------------------


def _scaled_up(s: GaudiTrainingJobSpec) -> AutoscalingStatus:
    d = decide(s, settled(2), obs(2, 10_000, at=0, throughput=200))  # 100 per worker
    assert d.replicas == 4
    return d.state


def test_efficiency_drop_rolls_back_and_holds_ceiling() -> None:
    s = spec(2, scaleUp={"stabilizationSeconds": 10, "maxStep": 2}, minEfficiency=0.7)
    state = settled(2)
    state.recommendations = [ScaleRecommendation(replicas=4, time=stamp(T0))]
    d = decide(s, state, obs(2, 10_000, at=0, throughput=200))
    assert d.replicas == 4
    d = decide(s, d.state, obs(4, 10_000, at=5, new_running=2, throughput=100))
    assert d.reason == Reason.VERIFYING_SCALE_UP  # settling
    d = decide(s, d.state, obs(4, 10_000, at=16, new_running=2, throughput=240))  # 60/worker
    assert d.replicas == 2 and d.reason == Reason.EFFICIENCY_BELOW_MINIMUM
    assert d.state.ceiling is not None and d.state.ceiling.replicas == 2
    assert "60%" in d.message


def test_efficiency_held_keeps_the_scale_up() -> None:
    s = spec(2)
    state = _scaled_up(s)
    d = decide(s, state, obs(4, 400, at=5, new_running=2, throughput=360))  # 90/worker
    assert not d.resize and "kept" in d.confirmed
    assert d.state.verifying is None and d.state.ceiling is None


def test_efficiency_waits_for_throughput_instead_of_guessing() -> None:
    s = spec(2)
    d = decide(s, _scaled_up(s), obs(4, 10_000, at=5, new_running=2, throughput=None))
    assert not d.resize and d.reason == Reason.VERIFYING_SCALE_UP


@pytest.mark.parametrize("value", [10_000, 0])
def test_verification_blocks_other_decisions(value: float) -> None:
    s = spec(2)
    d = decide(s, _scaled_up(s), obs(4, value, at=5, new_running=0, new_pending=2))
    assert not d.resize and d.reason == Reason.VERIFYING_SCALE_UP


def test_equal_recommendations_collapse_without_changing_decisions() -> None:
    s = spec(4, scaleDown={"stabilizationSeconds": 30, "maxStep": 1})
    state = decide(s, None, obs(4, 400, at=0)).state
    first_down = None
    for t in range(1, 45):
        d = decide(s, state, obs(4, 400 if t < 10 else 100, at=t))
        state = d.state
        assert len(state.recommendations) <= 2
        if d.resize:
            first_down = t
            break
    # The last high recommendation was at t=9; it leaves the 30 s window at t=40.
    assert first_down == 40


# --- what status records: a decision, not every pass ---------------------------------------


def test_a_decision_that_holds_is_not_worth_a_write() -> None:
    s = spec(2, scaleDown={"stabilizationSeconds": 300, "maxStep": 1})
    first = decide(s, settled(2), obs(2, 200, at=0)).state
    state = first
    for t in range(10, 600, 10):  # the metric wobbles within tolerance for 10 minutes
        d = decide(s, state, obs(2, 200 + (t % 30) - 15, at=t))
        assert d.reason == Reason.WITHIN_TOLERANCE
        assert not worth_writing(first, d.state), t
        state = d.state
    assert state.last_decision is not None and state.last_decision.time != stamp(T0)


def test_a_held_size_is_not_rewritten_for_every_wobble_of_what_the_metric_asks() -> None:
    s = spec(2, spec={"workers": {"replicas": 2, "minReplicas": 1, "maxReplicas": 2}})
    first = decide(s, settled(2), obs(2, 1700, at=0))
    assert first.reason == Reason.AT_MAX_REPLICAS and first.desired == 17
    d = decide(s, first.state, obs(2, 2100, at=10))
    assert d.reason == Reason.AT_MAX_REPLICAS and d.desired == 21
    assert not worth_writing(first.state, d.state)


def test_a_new_reason_a_resize_and_a_failing_metric_are_worth_a_write() -> None:
    s = spec(2, scaleUp={"stabilizationSeconds": 30, "maxStep": 2})
    held = decide(s, settled(2), obs(2, 200, at=0)).state
    waiting = decide(s, held, obs(2, 400, at=10))
    assert waiting.reason == Reason.STABILIZING and worth_writing(held, waiting.state)
    up = decide(s, waiting.state, obs(2, 400, at=45))
    assert up.resize and worth_writing(waiting.state, up.state)
    failing = decide(s, held, obs(2, None, at=10, metric_error="down"))
    assert worth_writing(held, failing.state)
    again = decide(s, failing.state, obs(2, None, at=60, metric_error="still down"))
    assert failing.state.query_failures != again.state.query_failures
    assert not worth_writing(failing.state, again.state)  # the backoff's count is memory


def test_a_resumed_state_keeps_its_newest_recommendation_until_now() -> None:
    s = spec(2, scaleUp={"stabilizationSeconds": 60, "maxStep": 2})
    # Written an hour ago when the decision last changed; the process that made it is gone.
    old = decide(s, settled(2), obs(2, 200, at=0)).state
    later = T0 + timedelta(hours=1)
    fresh = resume(old, later)
    assert [(r.replicas, r.time) for r in fresh.recommendations] == [(2, stamp(later))]
    d = decide(s, fresh, obs(2, 1000, at=3600))
    assert d.reason == Reason.STABILIZING and not d.resize
    # Without it, the hour-old recommendation falls out of the window: an instant resize.
    assert decide(s, old, obs(2, 1000, at=3600)).resize
    assert resume(AutoscalingStatus(), later) == AutoscalingStatus()


def test_a_window_running_at_a_restart_goes_on_from_its_start() -> None:
    s = spec(3, scaleDown={"stabilizationSeconds": 10, "maxStep": 1})
    steady = decide(s, settled(3), obs(3, 300, at=0)).state
    low = decide(s, steady, obs(3, 100, at=1))  # the first low reading: the window starts
    assert low.reason == Reason.STABILIZING and worth_writing(steady, low.state)
    # Restarted at 4 s from what status has (the write of 1 s); the window ends at 11 s.
    state = resume(low.state, T0 + timedelta(seconds=4))
    for t in (5, 8):
        d = decide(s, state, obs(3, 100, at=t))
        assert not d.resize, t
        state = d.state
    assert decide(s, state, obs(3, 100, at=11.5)).replicas == 2
