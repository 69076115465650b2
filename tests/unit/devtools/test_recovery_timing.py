"""The recovery benchmark's clock: log and API timestamps parsed to the same epoch, and
a trial's milestones split into phases that add up to kill -> first step."""

from __future__ import annotations

from gaudi_devtools.benchmarks.recovery import PHASES, Trial
from gaudi_devtools.realtraining import parse_time, stamped_lines


def test_runtime_nanosecond_and_api_second_times_share_one_epoch() -> None:
    assert parse_time("2026-11-29T21:40:01Z") == 1795988401.0
    assert abs(parse_time("2026-11-29T21:40:01.123456789Z") - 1795988401.123457) < 1e-5


def test_stamped_lines_come_back_in_time_order_without_unstamped_ones() -> None:
    text = (
        "2026-11-29T21:40:02.5Z gaudi3-train INFO: step 2 loss 4.0\n"
        "  a wrapped line without a time\n"
        "2026-11-29T21:40:01.25Z gaudi3-train INFO: step 1 loss 4.1\n"
    )
    lines = stamped_lines(text)
    assert [line for _, line in lines] == [
        "gaudi3-train INFO: step 1 loss 4.1",
        "gaudi3-train INFO: step 2 loss 4.0",
    ]
    assert lines[1][0] - lines[0][0] == 1.25


def test_phases_add_up_to_kill_to_first_step_and_lost_steps_count_from_the_resume() -> None:
    t = Trial(
        kill=100.4,
        detected=102.0,
        created=108.0,
        running=109.0,
        launched=112.5,
        rendezvous=115.0,
        resumed=120.0,
        first_step=121.0,
        resumed_from=20,
        last_before=23,
        generation=1,
    )
    phases = t.phases()
    assert list(phases) == list(PHASES)
    assert abs(sum(v for v in phases.values() if v is not None) - t.total) < 1e-9
    assert t.lost == 3
    assert abs(t.parts()["kill -> new pods created"] - 7.6) < 1e-9
