"""The stall clock's pure parts: reads, the clock rebuilt from history, and when status is
worth a write (at rest: never)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gaudi_operator.failover.progress import (
    JobClock,
    Progress,
    ProgressClocks,
    Recorded,
    advance,
    from_history,
    history_window,
    should_write,
    stall_due,
    status_progress,
)

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# --- reads ------------------------------------------------------------------------------------


def test_a_moving_step_moves_the_clock_and_a_still_one_only_the_read() -> None:
    p = advance(None, 10, at(0))
    assert p == Progress(10, at(0), at(0))
    p = advance(p, 10, at(5))
    assert p == Progress(10, at(0), at(5))
    p = advance(p, 12, at(10))
    assert p == Progress(12, at(10), at(10))
    # Resumed from an older checkpoint: lower, and a move all the same.
    assert advance(p, 7, at(15)) == Progress(7, at(15), at(15))


def test_no_series_is_no_progress_but_nothing_starts_without_a_first_step() -> None:
    assert advance(None, None, at(0)) is None
    assert advance(None, float("nan"), at(0)) is None
    p = advance(Progress(10, at(0), at(0)), None, at(30))
    # A job whose every process hangs is no longer scraped: its step is where it was.
    assert p == Progress(10, at(0), at(30)) and p.stalled_for() == 30


def test_stalled_for_counts_only_what_reads_showed() -> None:
    p = Progress(10, at(0), at(40))
    assert p.stalled_for() == 40
    assert p.stalled_for(since=at(25)) == 15  # a new world starts its own clock
    assert p.stalled_for(since=at(-10)) == 40


def test_the_stall_is_due_a_timeout_after_the_later_of_advance_and_ready() -> None:
    p = Progress(10, at(0), at(0))
    assert stall_due(p, None, 60) == at(60)
    assert stall_due(p, at(100), 60) == at(160)
    assert stall_due(p, at(-100), 60) == at(60)


# --- rebuilt after a start-up -------------------------------------------------------------------


def test_history_dates_the_step_from_the_first_point_of_its_last_run() -> None:
    ts = T0.timestamp()
    points = [(ts + t, v) for t, v in [(0, 5), (10, 6), (20, 8), (30, 8), (40, 8)]]
    p = from_history(points, at(41))
    assert p == Progress(8, at(20), at(41))


def test_history_never_dates_an_advance_earlier_than_it_was() -> None:
    # The step changed somewhere in (10, 20]: the rebuilt clock says 20, never earlier, so a
    # stall it finds is there; it is at most one query step late.
    ts = T0.timestamp()
    p = from_history([(ts, 1.0), (ts + 10, 1.0), (ts + 20, 2.0)], at(20))
    assert p is not None and p.advanced == at(20)


def test_a_step_constant_over_the_window_dates_from_its_start_and_a_gap_is_skipped() -> None:
    ts = T0.timestamp()
    p = from_history([(ts, 4.0), (ts + 50, float("nan")), (ts + 100, 4.0)], at(100))
    assert p == Progress(4.0, at(0), at(100))
    assert from_history([], at(0)) is None
    assert from_history([(ts, float("nan"))], at(0)) is None


def test_the_history_window_covers_the_timeout_at_a_hundredth_of_it() -> None:
    assert history_window(900) == (909.0, 9.0)
    assert history_window(30) == (31.0, 1.0)  # never finer than a second


# --- status ----------------------------------------------------------------------------------


def test_at_rest_nothing_is_written_within_the_interval() -> None:
    recorded = Recorded(100, False, at(0))
    for t in range(5, 600, 5):  # trains every read, 10 minutes long
        p = Progress(100 + t, at(t), at(t))
        assert not should_write(p, recorded, at(t), stalled=False, interval_seconds=600)
    p = Progress(700, at(600), at(600))
    assert should_write(p, recorded, at(600), stalled=False, interval_seconds=600)


def test_zero_interval_writes_only_transitions() -> None:
    recorded = Recorded(100, False, at(0))
    p = Progress(5000, at(86400), at(86400))
    assert not should_write(p, recorded, at(86400), stalled=False, interval_seconds=0)
    assert should_write(p, recorded, at(86400), stalled=True, interval_seconds=0)


def test_the_first_step_a_stall_and_moving_again_are_written_at_once() -> None:
    first = Progress(1, at(0), at(0))
    assert should_write(first, Recorded(None), at(0), stalled=False, interval_seconds=600)
    stuck = Progress(50, at(10), at(80))
    assert should_write(
        stuck, Recorded(40, False, at(5)), at(80), stalled=True, interval_seconds=600
    )
    again = Progress(51, at(90), at(90))
    assert should_write(
        again, Recorded(50, True, at(80)), at(90), stalled=False, interval_seconds=600
    )


def test_nothing_is_written_that_status_already_says() -> None:
    # After a restart, status has the step of a job that is stalled: no write for it.
    p = Progress(50, at(0), at(900))
    assert not should_write(
        p, Recorded(50, False, at(900)), at(900), stalled=True, interval_seconds=600
    )


def test_the_status_patch_has_the_step_and_its_advance() -> None:
    assert status_progress(Progress(12.0, at(3), at(9))) == {
        "step": 12,
        "time": "2026-01-01T12:00:03Z",
    }


# --- the clocks of every job ---------------------------------------------------------------------


def test_clocks_belong_to_one_incarnation_and_follow_the_jobs_that_exist() -> None:
    clocks = ProgressClocks()
    clocks.put(("ns", "a"), JobClock("uid-1", Progress(3, at(0), at(0))))
    clocks.put(("ns", "b"), JobClock("uid-2"))
    assert clocks.progress("ns", "a", "uid-1") == Progress(3, at(0), at(0))
    assert clocks.progress("ns", "a", "uid-9") is None  # deleted and re-created
    assert clocks.retain([("ns", "a")]) == [("ns", "b")]
    assert len(clocks) == 1
