"""The reconcile benchmark says which of issue 21's goals a run met, and what remains."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from gaudi_devtools.benchmarks.reconcile import goals

pytestmark = pytest.mark.unit

WRITES = {"total": 6.0, "pods": 1.0, "services": 0.0, "status": 3.0, "events": 2.0, "other": 0.0}


def test_unmet_goals_say_what_remains() -> None:
    lines = goals(
        1000,
        1,
        {"all_running": 90.0, "writes": WRITES},
        150.0,
        {"all_running": 30.0},
        SimpleNamespace(peak_rss_mib=130.0),
        80.0,
    )
    text = "\n".join(lines)
    assert "N + 4 = 5: 6.00, NOT met" in text and "status 3.00" in text
    assert "within 1.8x bare pods: 3.00x, NOT met" in text
    assert "150 vs 130 MiB, NOT met" in text
    assert "80 MiB before the first job, 70 MiB more" in text


def test_met_goals_at_ten_thousand_pods() -> None:
    writes = {**WRITES, "total": 12.0, "pods": 8.0, "services": 1.0, "status": 2.0, "events": 1.0}
    lines = goals(
        1250, 8, {"all_running": 100.0, "writes": writes}, 190.0, {"all_running": 90.0}, None, 80.0
    )
    text = "\n".join(lines)
    assert "N + 4 = 12: 12.00, met" in text
    assert "within 1.15x bare pods: 1.11x, met" in text
    assert "at most 200 MiB at 10,000 pods: 190 MiB, met" in text


def test_what_remains_of_the_time_is_the_cpu_beyond_bare_pods() -> None:
    ours = {
        "all_running": 20.0,
        "writes": {},
        "cluster_cpu": {"kube-apiserver": 25.0, "kwok": 3.0, "operator": 10.0},
    }
    bare = {"all_running": 10.0, "cluster_cpu": {"kube-apiserver": 12.0, "kwok": 3.0}}
    line = next(x for x in goals(1000, 1, ours, None, bare, None, None) if x.startswith("CPU"))
    assert "38.0 s against 15.0 s" in line and "2.53x" in line
    # biggest first, per job in ms
    assert line.index("kube-apiserver +13.0 s (+13.0 ms a job)") < line.index("operator +10.0 s")


def test_the_memory_goal_against_kubeflow_is_at_a_thousand_jobs() -> None:
    kf = SimpleNamespace(peak_rss_mib=90.0)
    ours = {"all_running": 10.0, "writes": {}}
    small = goals(100, 8, ours, 104.0, None, kf, None)
    assert any(x.startswith("peak RSS (the goal is at 1,000 jobs)") for x in small)
    assert not any(x.startswith("goal: peak RSS") for x in small)
    big = goals(1000, 1, ours, 80.0, None, kf, None)
    assert "goal: peak RSS at or below Kubeflow's: 80 vs 90 MiB, met" in big


def test_the_write_floor_with_no_operator_says_whether_the_time_goal_is_left_any_room() -> None:
    ours = {"all_running": 14.0, "writes": {}}
    bare = {"all_running": 10.0, "cluster_cpu": {"kube-apiserver": 8.0, "load generator": 2.0}}
    beyond = {
        "all_running": 12.5,
        "writes": {**WRITES, "total": 11.0},
        "cluster_cpu": {"kube-apiserver": 10.0, "kwok": 2.0, "load generator": 5.0},
    }
    within = {"all_running": 10.5, "writes": {**WRITES, "total": 11.0}}
    over = goals(100, 8, ours, None, bare, None, None, beyond)
    assert (
        "the write floor with no operator: 1.25x bare pods (11.00 writes a job, cluster CPU "
        "1.50x bare pods'); beyond the goal in this run before any operator work" in over
    )
    under = goals(100, 8, ours, None, bare, None, None, within)
    assert "1.05x bare pods (11.00 writes a job); 0.10x left for the operator's own work" in (
        "\n".join(under)
    )
    assert not any("write floor" in x for x in goals(100, 8, ours, None, bare, None, None))
