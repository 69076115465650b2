"""The goodput benchmark's accounting: effective training time, steps redone and the
recovery phases, from records shaped as its log lines give them."""

from __future__ import annotations

import pytest

from gaudi_devtools.benchmarks.goodput import (
    Failure,
    PathResult,
    account,
    goals,
    projected,
    records,
    recovery_of,
    schedule,
)


def test_every_second_of_an_uninterrupted_run_is_progress() -> None:
    steps = [(100.0 + i, i) for i in range(1, 31)]  # a step a second, steps 1..30
    acc = account(steps, [], [], start=110.0, end=130.0)
    assert acc.productive == pytest.approx(20.0)
    assert acc.effective == pytest.approx(1.0)
    assert (acc.redone_steps, acc.redone_seconds) == (0, 0.0)


def test_the_outage_and_redone_steps_are_lost_and_new_steps_count_from_the_resume() -> None:
    # Steps 1..10 at t=1..10; killed at 10.5; the new world resumes at step 7 at t=14
    # and redoes 8, 9, 10 (t=15, 16, 17) before new steps 11, 12, 13 (t=18, 19, 20).
    steps = [(float(i), i) for i in range(1, 11)]
    steps += [(14.0 + k, 7 + k) for k in range(1, 7)]
    kill = Failure(10.5, "delete", 1)
    acc = account(steps, [(14.0, 7)], [kill], start=0.0, end=20.0)
    # progress: t 0..10 (1..10 s: the first step line has no start) and 17..20
    assert acc.productive == pytest.approx(9.0 + 3.0)
    assert acc.redone_seconds == pytest.approx(3.0)  # steps 8, 9, 10 again
    assert (acc.new_steps, acc.redone_steps) == (13, 3)
    assert acc.effective == pytest.approx(12 / 20)
    # 8 s lost to one failure: with one every 120 s, 1 - 8/120
    assert projected(acc, 1, 120) == pytest.approx(1 - 8 / 120)


def test_a_step_spanning_a_failure_without_a_resume_record_is_not_progress() -> None:
    steps = [(1.0, 1), (2.0, 2), (9.0, 3)]  # step 3 logged 7 s later, no resume line
    acc = account(steps, [], [Failure(2.5, "kill", 0)], start=0.0, end=10.0)
    assert acc.productive == pytest.approx(1.0)


def test_steps_redone_count_from_the_highest_step_logged_before_the_resume() -> None:
    kill = Failure(10.5, "kill", 1)
    steps = [(float(i), i) for i in range(1, 11)]
    steps.append((10.8, 11))  # logged after the kill, done before it
    steps += [(13.0, 9), (13.5, 10)]
    got = recovery_of(kill, steps, [(12.0, 8)], waiting=[10.6], decisions=[11.0])
    assert got.redone == 3 and got.resumed_step == 8
    assert got.first_step == 13.0
    assert got.phases == pytest.approx(
        {"detect": 0.1, "decide": 0.4, "re-form": 1.0, "first step": 1.0}
    )
    assert got.seconds == pytest.approx(2.5)


def test_a_missing_milestone_folds_into_the_next_phase_and_later_records_are_ignored() -> None:
    kill = Failure(100.0, "delete", 0)
    steps = [(99.0, 20), (107.0, 21), (130.0, 26)]
    # An earlier decision (before the kill) and a later failure's records are not this one's.
    got = recovery_of(
        kill, steps, [(106.0, 20), (129.0, 25)], decisions=[50.0, 101.5, 128.0], until=120.0
    )
    assert got.phases == pytest.approx(
        {"detect": None, "decide": 1.5, "re-form": 4.5, "first step": 1.0}
    )
    assert got.redone == 0
    no_decision = recovery_of(kill, steps, [(106.0, 20)], waiting=[100.5], until=120.0)
    assert no_decision.phases == pytest.approx(
        {"detect": 0.5, "decide": None, "re-form": 5.5, "first step": 1.0}
    )
    unresolved = recovery_of(kill, steps, [], until=120.0)
    assert unresolved.resumed is None and unresolved.seconds is None


def test_records_read_rank_0_lines_and_the_launchers_lines() -> None:
    lines = [
        (1.0, "2026-12-07 10:00:01,000 [rank 0] gaudi_train.workload INFO: step 4 loss 3.1"),
        (1.1, "2026-12-07 10:00:01,100 [rank 1] gaudi_train.workload INFO: step 4 loss 3.1"),
        (2.0, "gaudi3-train INFO: state running -> waiting: world broke (process-exit)"),
        (2.5, "gaudi3-train INFO: decision: restart in place at generation 1"),
        (
            3.0,
            "2026-12-07 10:00:03,000 [rank 0] gaudi_train.session INFO: "
            "resumed from peer rank 1 at step 4",
        ),
        (3.2, "... [rank 0] gaudi_train.session INFO: resumed from step 5 (written by 2)"),
    ]
    rec = records(lines, [2.4])
    assert rec.steps == [(1.0, 4)]
    assert rec.resumes == [(3.0, 4), (3.2, 5)]
    assert rec.waiting == [2.0] and rec.decisions == [2.5] and rec.events == [2.4]


def test_the_schedule_is_seeded_balanced_and_leaves_the_last_half_interval_free() -> None:
    a = schedule(7, 1000.0, 100.0, 20.0)
    assert a == schedule(7, 1000.0, 100.0, 20.0)
    assert a != schedule(8, 1000.0, 100.0, 20.0)
    assert len(a) == 4 and all(1000 < f.at < 1090 for f in a)
    assert sorted(f.kind for f in a) == ["delete", "delete", "kill", "kill"]


def test_goal_lines_follow_the_figures() -> None:
    def result(path: str, total: float, redone: int, productive: float) -> PathResult:
        from gaudi_devtools.benchmarks.goodput import Accounting, Recovery

        f = Failure(10.0, "kill", 1)
        rec = Recovery(f, None, None, 10.0 + total / 2, 5, 10.0 + total, redone)
        return PathResult(path, 0.0, Accounting(100.0, productive, 0, 100, 0), [rec], [])

    met = goals([result("inplace", 1.5, 0, 99.0)], every=20)
    assert met[0].startswith("in place") and ": MET" in met[0]
    assert ": MET" in met[1]  # 1 s lost per failure: 99.2 % at one every 120 s
    slow = goals([result("inplace", 2.5, 0, 80.0)], every=20)
    assert "NOT MET" in slow[0] and "NOT MET" in slow[1]  # 20 s lost per failure
    assert "NOT MET" in goals([result("inplace", 1.0, 1, 99.0)], every=20)[0]


def test_the_spare_goal_line_reads_the_spares_path_deletes() -> None:
    from gaudi_devtools.benchmarks.goodput import Accounting, Recovery

    def spares(total: float, redone: int) -> PathResult:
        f = Failure(10.0, "delete", 0)
        rec = Recovery(f, None, 10.5, 10.0 + total / 2, 5, 10.0 + total, redone)
        kill = Recovery(Failure(30.0, "kill", 1), None, None, 30.5, 9, 40.0, 0)
        # A second delete found the pool cold (no SpareTookOver before the next failure).
        cold = Recovery(Failure(50.0, "delete", 1), None, 50.2, 56.0, 12, 57.0, 0)
        acc = Accounting(100.0, 98.0, 0, 100, 0)
        return PathResult("spares", 0.0, acc, [rec, kill, cold], [], [10.3])

    line = next(x for x in goals([spares(2.0, 0)], every=20) if x.startswith("a deleted pod"))
    assert ": MET" in line and "over the 1 deletes a spare took" in line, line
    assert "1 found no warm spare and recreated" in line
    slow = next(x for x in goals([spares(4.0, 0)], every=20) if x.startswith("a deleted pod"))
    assert "NOT MET" in slow
    redone = next(x for x in goals([spares(1.0, 2)], every=20) if x.startswith("a deleted pod"))
    assert "NOT MET" in redone
    absent = goals([], every=20)
    assert any("spares path did not run" in x for x in absent)


def test_the_notready_goal_counts_from_the_operator_s_decision_after_the_grace() -> None:
    from gaudi_devtools.benchmarks.goodput import Accounting, Recovery, notready_goal

    def spares(after: float, redone: int) -> PathResult:
        f = Failure(10.0, "notready", 1)
        # survivors notice at once, the operator decides 22 s later (the node's grace)
        rec = Recovery(f, 10.1, 32.0, 32.0 + after / 2, 5, 32.0 + after, redone)
        return PathResult("spares", 0.0, Accounting(100.0, 70.0, 0, 100, 0), [rec], [], [31.9])

    met = notready_goal(spares(2.0, 0))
    assert ": MET" in met and "kill -> decision p50 22.0 s" in met and "p50 2.00 s" in met
    assert "NOT MET" in notready_goal(spares(5.0, 0))
    assert "NOT MET" in notready_goal(spares(1.0, 3))
    assert "NOT MEASURED" in notready_goal(None)
    assert schedule(1, 0.0, 100.0, 20.0, ("kill", "delete", "notready"))[0].kind in (
        "kill",
        "delete",
        "notready",
    )
