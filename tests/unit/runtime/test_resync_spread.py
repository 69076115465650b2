"""The resync enqueues every job once a period in small batches, not in one burst that
would put a new job's first pass behind every running job's."""

from __future__ import annotations

from gaudi_operator.runtime.controller import spread


def keys(n: int) -> list[tuple[str, str]]:
    return [("ns", f"j{i}") for i in range(n)]


def test_625_jobs_over_30_seconds_go_21_a_second_each_once() -> None:
    batches = spread(keys(625), 30.0, 1.0)
    assert len(batches) <= 30
    assert max(len(b) for b in batches) == 21
    assert [k for b in batches for k in b] == keys(625)


def test_few_jobs_one_a_tick_and_none_is_nothing() -> None:
    assert [len(b) for b in spread(keys(3), 30.0, 1.0)] == [1, 1, 1]
    assert spread([], 30.0, 1.0) == []
    assert [len(b) for b in spread(keys(5), 0.5, 1.0)] == [5]  # a period shorter than a tick
