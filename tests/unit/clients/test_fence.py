"""The write fence at the HTTP layer, against a real HTTP server on loopback: past the
deadline no write leaves the process, whether it was issued after the deadline, queued
for a connection before it, or checked a loop step before its body went out. Every
client of the operator (its own JSON client, kopf's) goes through it and names the
replica in its User-Agent."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import pytest
import yaml
from aiohttp import web

from gaudi_operator.clients import fence, kopf_session, kube
from gaudi_operator.clients.fence import Fence, FencedRequest, FencedWrite, request_class

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.script: list[float] = []  # values returned before `now`, one per read

    def __call__(self) -> float:
        return self.script.pop(0) if self.script else self.now


class Api:
    """A loopback HTTP server that records what reached it."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []  # (method, path, user agent)
        self.hold = asyncio.Event()
        self.hold.set()
        self.arrived = asyncio.Event()
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.seen.append((request.method, request.path, request.headers.get("User-Agent", "")))
        self.arrived.set()
        if request.path == "/slow":
            await self.hold.wait()
        return web.json_response({"kind": "Status", "metadata": {}})

    def writes(self) -> list[str]:
        return [m for m, _, _ in self.seen if m != "GET"]


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    server = Api()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    server.url = f"http://127.0.0.1:{port}"
    yield server
    await runner.cleanup()


def fenced(clock: Clock, deadline: float, **kwargs: Any) -> tuple[Fence, aiohttp.ClientSession]:
    f = Fence(clock=clock)
    f.hold_until(deadline)
    return f, aiohttp.ClientSession(request_class=request_class(f), **kwargs)


async def test_past_the_deadline_writes_never_reach_the_server_and_reads_still_do(
    api: Api,
) -> None:
    clock = Clock()
    f, session = fenced(clock, deadline=110.0)
    async with session:
        async with session.post(f"{api.url}/a", json={}) as resp:
            assert resp.status == 200
        clock.now = 110.0
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            with pytest.raises(FencedWrite):
                await session.request(method, f"{api.url}/b", json={})
        async with session.get(f"{api.url}/c") as resp:
            assert resp.status == 200
    assert api.writes() == ["POST"]
    assert f.refused == 4


async def test_a_write_queued_before_the_deadline_is_checked_when_it_is_sent(api: Api) -> None:
    """One connection, busy: the write waits for it past the deadline and is refused."""
    clock = Clock()
    _, session = fenced(clock, deadline=110.0, connector=aiohttp.TCPConnector(limit=1))
    api.hold.clear()
    async with session:
        slow = asyncio.create_task(session.get(f"{api.url}/slow"))
        await asyncio.wait_for(api.arrived.wait(), 5)
        queued = asyncio.create_task(session.patch(f"{api.url}/status", json={"x": 1}))
        await asyncio.sleep(0.1)  # waiting for the only connection
        clock.now = 111.0
        api.hold.set()
        (await slow).release()
        with pytest.raises(FencedWrite):
            await queued
    assert api.writes() == []


async def test_a_write_checked_a_step_before_its_body_goes_out_is_not_sent(api: Api) -> None:
    """The head is checked and buffered, then (Python < 3.12) the body is written from a
    task one loop step later: a pause in between must not let it out after the deadline."""
    clock = Clock()
    f, session = fenced(clock, deadline=110.0)
    async with session:
        clock.script = [109.0]  # the first check passes; every later read is past
        clock.now = 111.0
        with pytest.raises(FencedWrite):
            await session.put(f"{api.url}/lease", json={"spec": {}})
    assert api.writes() == []
    assert f.refused == 1


def test_an_open_fence_has_no_deadline_and_a_closed_one_never_reopens() -> None:
    f = Fence(clock=Clock())
    assert f.allows() and f.deadline == math.inf  # no election, or still campaigning
    f.close()
    f.hold_until(1e9)
    assert not f.allows()


@pytest.fixture
def process_fence(monkeypatch: pytest.MonkeyPatch) -> tuple[Fence, Clock]:
    clock = Clock()
    f = Fence(clock=clock)
    monkeypatch.setattr(FencedRequest, "fence", f)
    monkeypatch.setattr(kube, "_identity", "replica-7_abc")
    return f, clock


async def test_the_operators_kubernetes_client_is_fenced_and_names_the_replica(
    api: Api, tmp_path: Path, process_fence: tuple[Fence, Clock]
) -> None:
    f, clock = process_fence
    config = tmp_path / "kubeconfig"
    config.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    # `server`: the kubeconfig's address is a dead port; the override is what is dialled.
    clients = await kube.connect(str(config), component="operator", server=api.url)
    try:
        await kube.create(clients, "/api/v1/namespaces/ns/pods", {"kind": "Pod"})
        f.hold_until(clock.now)  # the deadline is now
        with pytest.raises(FencedWrite):
            await kube.create(clients, "/api/v1/namespaces/ns/pods", {"kind": "Pod"})
        with pytest.raises(FencedWrite):
            await clients.delete(kube.core_path("ns", "pods", "p"))
    finally:
        await clients.close()
    assert [(m, p) for m, p, _ in api.seen] == [("POST", "/api/v1/namespaces/ns/pods")]
    assert api.seen[0][2] == "gaudi-operator/replica-7_abc (operator)"
    assert kube.transient(FencedWrite("x"))  # a line in the log, not a traceback


async def test_kopfs_session_is_fenced_and_names_the_replica(
    api: Api, process_fence: tuple[Fence, Clock]
) -> None:
    f, _ = process_fence
    info = kopf.ConnectionInfo(server=api.url, token="t")
    session = kopf_session.session_for(info)
    async with session:
        async with session.post(f"{api.url}/api/v1/namespaces/ns/events", json={}) as resp:
            assert resp.status == 200
        f.close()
        with pytest.raises(FencedWrite):
            await session.patch(f"{api.url}/apis/x/v1/namespaces/ns/things/a", json={})
    assert api.writes() == ["POST"]
    assert api.seen[0][2] == "gaudi-operator/replica-7_abc (kopf)"


def test_kopf_logs_in_through_the_fenced_session() -> None:
    from kopf._core.intents.causes import Activity

    import gaudi_operator.app  # noqa: F401  (registers every handler)

    registry = kopf.get_default_registry()
    logins = [
        h.fn
        for h in registry._activities.get_all_handlers()
        if h.activity == Activity.AUTHENTICATION and not h._fallback
    ]
    assert logins == [kopf_session.login]
    assert fence.FencedRequest.fence is fence.FENCE
