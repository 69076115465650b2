"""The local cluster's supervisor: restart backoff (pure) and one supervision step at a
time over real child processes (no cluster)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from gaudi_devtools.cluster.backoff import Backoff, RestartState
from gaudi_devtools.cluster.processes import Processes
from gaudi_devtools.cluster.supervisor import Supervisor

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_backoff_doubles_from_the_first_delay_up_to_the_cap() -> None:
    b = Backoff(initial_seconds=1, factor=2, cap_seconds=30)
    assert [b.delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert b.delay(10_000) == 30  # a long crash loop neither overflows nor exceeds the cap


def test_crash_loop_backs_off_and_a_stable_run_starts_over() -> None:
    state = RestartState(Backoff(initial_seconds=1, factor=2, cap_seconds=30, stable_seconds=60))
    assert [state.exited(ran_seconds=2) for _ in range(4)] == [1, 2, 4, 8]
    assert state.exited(ran_seconds=61) == 1  # ran long enough: healthy again
    assert state.exited(ran_seconds=0.5) == 2


def _step_until(sup: Supervisor, predicate, timeout: float = 10):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sup.step()
        found = predicate()
        if found:
            return found
        time.sleep(0.02)
    raise AssertionError("supervisor did not get there")


@pytest.fixture
def supervised(tmp_path: Path):  # type: ignore[no-untyped-def]
    procs = Processes(tmp_path)
    sup = Supervisor(procs, Backoff(initial_seconds=0.05, cap_seconds=0.2))
    yield procs, sup
    procs.stop("sleeper", timeout=2)
    for p in sup.retired:
        p.wait(timeout=5)


def test_a_killed_component_is_restarted_and_the_exit_recorded(supervised) -> None:  # type: ignore[no-untyped-def]
    procs, sup = supervised
    first = procs.start("sleeper", SLEEPER)  # no supervisor yet: started directly
    sup.step()  # adopted
    assert procs.pid("sleeper") == first

    os.kill(first, signal.SIGKILL)
    second = _step_until(sup, lambda: (p := procs.pid("sleeper")) and p != first and p)
    os.kill(second, signal.SIGKILL)  # now the supervisor's own child: exit code known
    third = _step_until(sup, lambda: (p := procs.pid("sleeper")) and p != second and p)

    records = procs.restarts()
    assert [r["component"] for r in records] == ["sleeper", "sleeper"]
    assert records[0]["exit_code"] == "unknown"  # adopted: not our child
    assert records[1]["exit_code"] == -signal.SIGKILL
    assert records[1]["restart_in_seconds"] > records[0]["restart_in_seconds"]
    assert "restarting in" in (procs.logs / "sleeper.log").read_text()
    assert procs.pid("sleeper") == third


def test_a_stopped_component_stays_stopped(supervised) -> None:  # type: ignore[no-untyped-def]
    procs, sup = supervised
    first = procs.start("sleeper", SLEEPER)
    sup.step()
    os.kill(first, signal.SIGKILL)
    restarted = _step_until(sup, lambda: (p := procs.pid("sleeper")) and p != first and p)

    procs.stop("sleeper", timeout=5)
    for _ in range(20):
        sup.step()
        time.sleep(0.02)
    assert procs.pid("sleeper") is None
    assert not Path(f"/proc/{restarted}").exists()  # stopped and reaped, no zombie
    assert len(procs.restarts()) == 1  # the stop is not counted as a crash


def test_a_component_that_died_between_supervisors_is_restarted_and_recorded(
    supervised,  # type: ignore[no-untyped-def]
) -> None:
    procs, sup = supervised
    first = procs.start("sleeper", SLEEPER)
    os.kill(first, signal.SIGKILL)
    os.waitpid(first, 0)  # we started it directly: reap it, as init would
    restarted = _step_until(sup, lambda: procs.pid("sleeper"))
    assert restarted != first
    assert [(r["component"], r["exit_code"]) for r in procs.restarts()] == [("sleeper", "unknown")]
