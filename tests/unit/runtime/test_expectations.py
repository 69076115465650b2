"""Expectations: a job's pass waits until the pod watch has shown what the last pass did."""

from __future__ import annotations

import pytest

from gaudi_operator.runtime.expectations import Expectations

pytestmark = pytest.mark.unit

KEY = ("ns", "j")


class Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


def test_created_pods_are_expected_until_the_watch_shows_each_by_name() -> None:
    e = Expectations()
    e.expect(KEY, creations=["j-worker-0", "j-worker-1"])
    assert not e.satisfied(KEY)
    e.observe(KEY, "j-worker-0", "u0", going=False)
    assert not e.satisfied(KEY)
    e.observe(KEY, "j-worker-1", "u1", going=True)  # created and at once deleted: seen too
    assert e.satisfied(KEY) and len(e) == 0


def test_deleted_pods_are_expected_until_the_watch_shows_them_going() -> None:
    e = Expectations()
    e.expect(KEY, deletions=["u0"])
    e.observe(KEY, "j-worker-0", "u0", going=False)  # an older event of it: still there
    assert not e.satisfied(KEY)
    e.observe(KEY, "j-worker-0", "u0", going=True)  # deletionTimestamp, or DELETED
    assert e.satisfied(KEY)


def test_an_event_before_the_request_returns_is_not_lost() -> None:
    # Expectations are raised before the POST: its watch event may come first.
    e = Expectations()
    e.expect(KEY, creations=["j-worker-0"])
    e.observe(KEY, "j-worker-0", "u0", going=False)
    assert e.satisfied(KEY)


def test_a_failed_request_is_taken_back_and_a_lost_event_expires() -> None:
    clock = Clock()
    e = Expectations(ttl=300, clock=clock)
    e.expect(KEY, creations=["j-worker-0", "j-worker-1"])
    e.created(KEY, "j-worker-1")  # its POST failed: the watch will never show it
    assert e.outstanding(KEY) is not None and e.outstanding(KEY).creations == {"j-worker-0"}
    clock.t = 299
    assert not e.satisfied(KEY)
    clock.t = 301
    assert e.satisfied(KEY) and e.outstanding(KEY) is None


def test_forgetting_a_job_drops_its_expectations() -> None:
    e = Expectations()
    e.expect(KEY, creations=["j-worker-0"])
    e.forget(KEY)
    assert e.satisfied(KEY) and len(e) == 0
