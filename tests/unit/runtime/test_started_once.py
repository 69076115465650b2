"""Every background task is supervised and started once, even when kopf retries a
start-up handler that raised half-way."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from typing import Any

import kopf
import pytest

from gaudi_operator.runtime import supervision
from gaudi_operator.runtime.config import OperatorConfig
from gaudi_operator.runtime.supervision import Supervisor
from unit.fake_api import FakeApi

pytestmark = pytest.mark.unit


@pytest.fixture
def fresh_supervisor(monkeypatch: pytest.MonkeyPatch) -> Iterator[Supervisor]:
    sup = Supervisor()
    monkeypatch.setattr(supervision, "SUPERVISOR", sup)
    yield sup


def live_tasks() -> Counter[str]:
    return Counter(t.get_name() for t in asyncio.all_tasks() if not t.done())


async def test_a_loop_is_never_supervised_twice_under_one_name(
    fresh_supervisor: Supervisor,
) -> None:
    async def forever() -> None:
        await asyncio.Event().wait()

    first = supervision.supervise("resync", forever)
    again = supervision.supervise("resync", forever)
    assert again is first
    assert live_tasks()["supervised-resync"] == 1
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    restarted = supervision.supervise("resync", forever)  # once stopped, it may start anew
    assert restarted is not first
    restarted.cancel()
    await asyncio.gather(restarted, return_exceptions=True)


async def test_a_retried_start_up_starts_each_background_loop_once(
    fresh_supervisor: Supervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gaudi_operator import app
    from gaudi_operator.clients import kube

    async def connect(*_: Any, **__: Any) -> kube.Clients:
        return FakeApi().clients()

    monkeypatch.setattr(kube, "connect", connect)
    real_start = app.queueing_wiring.start
    calls = [0]

    async def flaky_start(*args: Any, **kwargs: Any) -> None:
        calls[0] += 1
        if calls[0] == 1:
            raise ConnectionError("the API server went away during start-up")
        await real_start(*args, **kwargs)

    monkeypatch.setattr(app.queueing_wiring, "start", flaky_start)
    memo = kopf.Memo(config=OperatorConfig(metrics_port=0, workers=2))
    settings = kopf.OperatorSettings()
    with pytest.raises(ConnectionError):
        await app.startup(settings=settings, memo=memo)
    first = {k: memo.get(k) for k in ("controller", "autoscaler", "stall_task", "clients")}
    await app.startup(settings=settings, memo=memo)  # kopf's retry
    try:
        for k, v in first.items():
            assert memo.get(k) is v, f"{k} was started again"
        tasks = live_tasks()
        for name in ("worker-0", "worker-1", "resync", "autoscaler", "stall-clock", "queueing-0"):
            assert tasks[f"supervised-{name}"] == 1, (name, tasks)
    finally:
        await app.cleanup(memo=memo)


async def test_the_queueing_workers_are_supervised(fresh_supervisor: Supervisor) -> None:
    from gaudi_operator.queueing.effects import Admission, AdmissionController

    controller = AdmissionController(Admission(FakeApi().clients()), workers=2)
    controller.start()
    controller.start()  # a second start starts nothing
    try:
        assert set(fresh_supervisor.loops) == {"queueing-0", "queueing-1"}
        assert live_tasks()["supervised-queueing-0"] == 1
    finally:
        await controller.stop()
