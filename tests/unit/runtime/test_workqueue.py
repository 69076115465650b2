"""The keyed work queue: no duplicate passes, no lost wake-ups."""

from __future__ import annotations

import asyncio

import pytest

from gaudi_operator.runtime.workqueue import WorkQueue

pytestmark = pytest.mark.unit


async def test_a_burst_of_adds_is_one_pass() -> None:
    q = WorkQueue()
    for _ in range(50):
        q.add("a")
    q.add("b")
    assert len(q) == 2
    assert await q.get() == "a"
    assert await q.get() == "b"


async def test_add_while_active_requeues_after_done() -> None:
    q = WorkQueue()
    q.add("a")
    key = await q.get()
    q.add("a")  # an event during the pass
    assert len(q) == 0  # never handed to a second worker meanwhile
    q.done(key)
    assert len(q) == 1


async def test_add_after_keeps_the_earliest() -> None:
    q = WorkQueue()
    q.add_after("a", 5)
    q.add_after("a", 0.01)
    q.add_after("a", 10)
    assert await asyncio.wait_for(q.get(), 1) == "a"
    q.close()
