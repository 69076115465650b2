"""Supervised loops: a loop that raises is restarted with a capped back-off and counted, and
liveness (kopf's real /healthz) turns red only when a loop keeps failing."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator

import httpx
import kopf
import pytest
from kopf._core.engines.indexing import OperatorIndexers
from kopf._core.engines.probing import health_reporter

from gaudi_operator.observability import metrics
from gaudi_operator.runtime import supervision
from gaudi_operator.runtime.supervision import LoopsFailing, Supervisor

pytestmark = pytest.mark.unit


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay
        await asyncio.sleep(0)


def restarts(loop: str) -> float:
    return metrics.LOOP_RESTARTS.labels(loop=loop)._value.get()


async def test_a_loop_that_raises_is_restarted_with_capped_backoff_and_counted() -> None:
    clock = FakeClock()
    sup = Supervisor(base_delay=1, max_delay=8, clock=clock, sleep=clock.sleep)
    runs = 0
    done = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 6:
            raise RuntimeError(f"boom {runs}")
        done.set()
        await asyncio.Event().wait()  # then runs for good

    before = restarts("flaky")
    task = sup.supervise("flaky", flaky)
    await asyncio.wait_for(done.wait(), 5)
    assert clock.sleeps == [1, 2, 4, 8, 8, 8]
    assert sup.loops["flaky"].restarts == 6
    assert restarts("flaky") - before == 6
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_loop_that_ran_long_before_failing_starts_its_backoff_over() -> None:
    sup = Supervisor(base_delay=1, max_delay=8)
    err = RuntimeError("x")
    assert sup.record_failure("l", err, ran_for=0) == 1
    assert sup.record_failure("l", err, ran_for=0) == 2
    assert sup.record_failure("l", err, ran_for=60) == 1


async def test_health_turns_red_after_max_failures_in_the_window_and_recovers() -> None:
    clock = FakeClock()
    sup = Supervisor(max_failures=3, window=100, clock=clock)
    err = ValueError("bad")
    sup.record_failure("a", err, ran_for=0)
    sup.record_failure("a", err, ran_for=0)
    assert sup.health() == {"a": {"restarts": 2}}  # two restarts: still alive
    sup.record_failure("a", err, ran_for=0)
    with pytest.raises(LoopsFailing, match=r"a \(ValueError: bad\)"):
        sup.health()
    clock.now += 101  # the failures age out of the window
    assert sup.health() == {"a": {"restarts": 3}}


async def test_cancelling_the_supervised_task_stops_the_loop_without_a_restart() -> None:
    sup = Supervisor()
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    task = sup.supervise("forever", forever)
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sup.loops["forever"].restarts == 0


@pytest.fixture
def fresh_supervisor(monkeypatch: pytest.MonkeyPatch) -> Iterator[Supervisor]:
    sup = Supervisor(max_failures=2)
    monkeypatch.setattr(supervision, "SUPERVISOR", sup)
    yield sup


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def kopf_healthz(registry: kopf.OperatorRegistry) -> AsyncIterator[str]:
    """kopf's own liveness server on a loopback port (a fresh one probes afresh: kopf caches
    probe results for 10 s)."""
    url = f"http://127.0.0.1:{free_port()}/healthz"
    ready = asyncio.Event()
    server = asyncio.create_task(
        health_reporter(
            url,
            memo=kopf.Memo(),
            indices=OperatorIndexers().indices,
            registry=registry,
            settings=kopf.OperatorSettings(),
            ready_flag=ready,
        )
    )
    try:
        await asyncio.wait_for(ready.wait(), 10)
        yield url
    finally:
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server


async def test_kopf_healthz_answers_500_while_a_loop_keeps_failing(
    fresh_supervisor: Supervisor,
) -> None:
    registry = kopf.OperatorRegistry()
    kopf.on.probe(id="loops", registry=registry)(supervision.probe)
    fresh_supervisor.record_failure("stall-clock", RuntimeError("x"), ran_for=0)
    async with kopf_healthz(registry) as url, httpx.AsyncClient(timeout=10) as http:
        ok = await http.get(url)
    assert ok.status_code == 200
    assert ok.json() == {"loops": {"stall-clock": {"restarts": 1}}}

    fresh_supervisor.record_failure("stall-clock", RuntimeError("x"), ran_for=0)
    async with kopf_healthz(registry) as url, httpx.AsyncClient(timeout=10) as http:
        red = await http.get(url)
    assert red.status_code == 500
