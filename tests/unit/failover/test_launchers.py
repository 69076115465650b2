"""The operator's side of the launchers' control channel against the launcher's real HTTP
endpoint (gaudi_train.control_server on 127.0.0.1, a stand-in launcher state behind it):
the long poll wakes the job on a change and not on progress, decisions are delivered
with the token, a wrong token delivers nothing."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from gaudi_operator.failover.launchers import LauncherWatch
from gaudi_operator.jobs.observation import WorkerPod
from gaudi_train import control_protocol as proto
from gaudi_train.control_protocol import Decision, LauncherStatus
from gaudi_train.control_server import ControlServer

pytestmark = pytest.mark.unit

KEY = ("ns", "j")
TOKEN = "s3cret"


class Launcher:
    """What a launcher's endpoint serves: a status whose version grows on a change."""

    def __init__(self) -> None:
        self.version = 1
        self.state = proto.RUNNING
        self.generation = 0
        self.decisions: list[Decision] = []
        self.cond = threading.Condition()

    def status_json(self, since: int | None = None, wait: float = 0.0) -> dict[str, Any]:
        deadline = time.monotonic() + wait
        with self.cond:
            while since == self.version and time.monotonic() < deadline:
                self.cond.wait(deadline - time.monotonic())
            return LauncherStatus(
                self.version, self.state, self.generation, pod="j-worker-0"
            ).to_json()

    def ready(self) -> bool:
        return True

    def offer(self, decision: Decision) -> tuple[int, dict[str, Any]]:
        with self.cond:
            self.decisions.append(decision)
            self.generation = decision.in_place_generation
            self.version += 1
            self.cond.notify_all()
        return 202, self.status_json()

    def change(self, state: str) -> None:
        with self.cond:
            self.state, self.version = state, self.version + 1
            self.cond.notify_all()


@pytest.fixture
def launcher() -> Iterator[tuple[Launcher, int]]:
    target = Launcher()
    server = ControlServer("127.0.0.1", 0, TOKEN, target)
    server.start()
    try:
        yield target, server.port
    finally:
        server.stop()


def pod(uid: str = "u0") -> WorkerPod:
    return WorkerPod(
        name="j-worker-0", uid=uid, index=0, generation=0, phase="Running", ip="127.0.0.1"
    )


async def until(check: Any, seconds: float = 5.0) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if got := check():
            return got
        await asyncio.sleep(0.02)
    raise AssertionError("timed out")


async def test_a_launcher_that_starts_waiting_wakes_its_job_at_once(launcher: Any) -> None:
    target, port = launcher
    watch = LauncherWatch(port=port)
    woken: list[tuple[str, str]] = []
    watch.wake = woken.append
    try:
        await until(lambda: watch.sync(KEY, TOKEN, [pod()]).get("j-worker-0"))
        assert woken == [KEY]
        target.change(proto.WAITING)
        got = await until(
            lambda: (
                (s := watch.sync(KEY, TOKEN, [pod()]).get("j-worker-0"))
                and s.state == proto.WAITING
            )
        )
        assert got and len(woken) == 2  # within the long poll, not after it

        missed = await watch.deliver(
            KEY, {"j-worker-0": pod()}, {"j-worker-0": Decision(1, proto.RESTART, world_pods=1)}
        )
        assert missed == [] and [d.in_place_generation for d in target.decisions] == [1]
        await until(lambda: watch.sync(KEY, TOKEN, [pod()])["j-worker-0"].in_place_generation == 1)
    finally:
        await watch.aclose()


async def test_a_wrong_token_delivers_nothing_and_a_new_pod_starts_from_nothing(
    launcher: Any,
) -> None:
    target, port = launcher
    watch = LauncherWatch(port=port)
    try:
        assert watch.sync(KEY, "wrong", [pod()]) == {}
        await asyncio.sleep(0.3)
        assert watch.sync(KEY, "wrong", [pod()]) == {}  # 401: never heard
        missed = await watch.deliver(
            KEY, {"j-worker-0": pod()}, {"j-worker-0": Decision(1, proto.RESTART, world_pods=1)}
        )
        assert missed == ["j-worker-0"] and target.decisions == []
        await until(lambda: watch.sync(KEY, TOKEN, [pod()]))
        # The same name, another pod: what the old one said is gone.
        assert watch.sync(KEY, TOKEN, [pod("u1")]) == {}
        assert watch.sync(KEY, TOKEN, []) == {}
    finally:
        await watch.aclose()


async def test_a_launcher_that_answered_and_then_cannot_be_reached_is_unreachable() -> None:
    import httpx

    from gaudi_operator.clients.launcher import LauncherClient

    said = Launcher().status_json()
    calls: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(str(request.url))
        if len(calls) == 1:
            return httpx.Response(200, json=said)
        raise httpx.ConnectError("connection refused")  # its node died: nothing listens

    watch = LauncherWatch(LauncherClient(httpx.MockTransport(answer)), port=1)
    woken: list[tuple[str, str]] = []
    watch.wake = woken.append
    try:
        await until(lambda: watch.sync(KEY, TOKEN, [pod()]).get("j-worker-0"))
        await until(lambda: watch.unreachable(KEY) == {"j-worker-0"})
        assert len(woken) == 2  # heard, then lost: each wakes the job once
        # What it said last is still there for the passes.
        assert watch.sync(KEY, TOKEN, [pod()])["j-worker-0"].state == said["state"]
    finally:
        await watch.aclose()
