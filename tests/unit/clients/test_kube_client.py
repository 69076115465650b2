"""The operator's JSON client (clients/kube.py) and its credentials (clients/credentials.py)
against a loopback HTTP server: what goes on the wire, what an error says, which errors
are worth a retry, and that writes still go through the leader's fence."""

from __future__ import annotations

import json
import stat
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from gaudi_operator.clients import credentials, kube
from gaudi_operator.clients.fence import Fence, FencedRequest, FencedWrite
from gaudi_operator.runtime.leader import KubeLeases, Lease

pytestmark = pytest.mark.unit


class Server:
    """Records each request; answers from `answers[(method, path)]` or 200 {}."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.answers: dict[tuple[str, str], tuple[int, Any]] = {}
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.seen.append(
            {
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "headers": dict(request.headers),
                "body": json.loads(raw) if raw else None,
            }
        )
        if request.query.get("watch") == "true":
            resp = web.StreamResponse()
            await resp.prepare(request)
            for event in ({"type": "ADDED", "object": {"a": 1}}, {"type": "DELETED"}):
                await resp.write(json.dumps(event).encode() + b"\n")
            await resp.write_eof()
            return resp
        status, body = self.answers.get((request.method, request.path), (200, {}))
        return web.json_response(body, status=status)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    s = Server()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", s.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    s.url = f"http://127.0.0.1:{port}"
    yield s
    await runner.cleanup()


def kubeconfig(path: Path, server: str, user: dict[str, Any]) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": user}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return path


@pytest.fixture
async def clients(server: Server, tmp_path: Path) -> AsyncIterator[kube.Clients]:
    c = await kube.connect(str(kubeconfig(tmp_path / "config", server.url, {"token": "t0"})))
    yield c
    await c.close()


def status(code: int, message: str, reason: str = "") -> tuple[int, Any]:
    return code, {"kind": "Status", "code": code, "message": message, "reason": reason}


async def test_an_error_names_the_status_and_the_api_servers_message(
    server: Server, clients: kube.Clients
) -> None:
    server.answers[("GET", "/api/v1/namespaces/ns/pods/p")] = status(404, 'pods "p" not found')
    with pytest.raises(kube.ApiError) as caught:
        await clients.get(kube.core_path("ns", "pods", "p"))
    err = caught.value
    assert kube.status_code(err) == 404 and not kube.transient(err)
    assert kube.api_message(err) == 'pods "p" not found'
    assert str(err) == 'HTTP 404 Not Found: pods "p" not found'

    path = "/apis/g/v1/namespaces/ns/things"
    server.answers[("POST", path)] = status(403, "namespace ns is being terminated")
    server.answers[("POST", path)][1]["details"] = {"causes": [{"reason": "NamespaceTerminating"}]}
    with pytest.raises(kube.ApiError) as caught:
        await kube.create(clients, kube.custom_path("g", "v1", "ns", "things"), {"kind": "Thing"})
    assert kube.status_code(caught.value) == 403 and kube.namespace_terminating(caught.value)


def test_which_errors_are_transient() -> None:
    assert kube.transient(kube.ApiError(429, "Too Many Requests"))
    assert kube.transient(kube.ApiError(503, "Service Unavailable"))
    assert not kube.transient(kube.ApiError(409, "Conflict"))
    assert not kube.transient(kube.ApiError(422, "Unprocessable Entity"))
    assert kube.transient(aiohttp.ClientConnectionError("reset"))
    assert kube.transient(TimeoutError()) and kube.transient(ConnectionRefusedError())
    assert kube.transient(FencedWrite("refused"))
    assert not kube.transient(ValueError("a bug"))
    # Not a Status object (a proxy's page): the body itself, else the reason.
    assert kube.api_message(kube.ApiError(502, "Bad Gateway", "<html>")) == "<html>"
    assert kube.api_message(kube.ApiError(502, "Bad Gateway")) == "Bad Gateway"


async def test_requests_on_the_wire(server: Server, clients: kube.Clients) -> None:
    server.answers[("GET", "/api/v1/pods")] = (200, {"items": [{"metadata": {"name": "p"}}]})
    listed = await clients.get("/api/v1/pods", {"labelSelector": "a=b", "limit": 5, "x": None})
    assert listed["items"][0]["metadata"]["name"] == "p"
    await clients.patch(kube.custom_path("g", "v1", "ns", "things", "a", "status"), {"s": 1})
    await clients.delete(
        kube.custom_path("g", "v1", "ns", "things", "a"),
        body={"preconditions": {"uid": "u1"}},
        params={"propagationPolicy": "Background"},
    )
    events = [e async for e in clients.watch("/api/v1/pods", {"allowWatchBookmarks": True})]
    assert [e["type"] for e in events] == ["ADDED", "DELETED"]

    get, patch, delete, watch = server.seen
    assert get["query"] == {"labelSelector": "a=b", "limit": "5"}
    assert get["headers"]["Authorization"] == "Bearer t0"
    assert get["headers"]["User-Agent"].endswith("(operator)")
    assert patch["path"] == "/apis/g/v1/namespaces/ns/things/a/status"
    assert patch["headers"]["Content-Type"] == kube.MERGE_PATCH
    assert (delete["method"], delete["body"]) == ("DELETE", {"preconditions": {"uid": "u1"}})
    assert delete["query"] == {"propagationPolicy": "Background"}
    assert watch["query"] == {"allowWatchBookmarks": "true", "watch": "true"}


async def test_writes_are_refused_once_the_fence_is_closed(
    server: Server, clients: kube.Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = Fence(clock=lambda: 100.0)
    monkeypatch.setattr(FencedRequest, "fence", f)
    await kube.create(clients, kube.core_path("ns", "events"), {"kind": "Event"})
    f.close()
    for write in (
        kube.create(clients, kube.core_path("ns", "events"), {"kind": "Event"}),
        clients.patch(kube.core_path("ns", "pods", "p"), {"metadata": {}}),
        clients.delete(kube.core_path("ns", "pods", "p")),
        clients.request("PUT", "/apis/coordination.k8s.io/v1/namespaces/ns/leases/l", body={}),
    ):
        with pytest.raises(FencedWrite):
            await write
    await clients.get(kube.core_path("ns", "pods", "p"))  # reads still go out
    assert [s["method"] for s in server.seen] == ["POST", "GET"]


async def test_a_token_file_is_read_again_after_a_401(server: Server, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")
    config = kubeconfig(tmp_path / "config", server.url, {"tokenFile": "token"})  # relative
    clients = await kube.connect(str(config))
    try:
        await clients.get("/api")
        token.write_text("second\n")  # rotated: the minute is not up, so still the old one
        server.answers[("GET", "/api")] = status(401, "Unauthorized")
        with pytest.raises(kube.ApiError):
            await clients.get("/api")
        del server.answers[("GET", "/api")]
        await clients.get("/api")
    finally:
        await clients.close()
    sent = [s["headers"]["Authorization"] for s in server.seen]
    assert sent == ["Bearer first", "Bearer first", "Bearer second"]


async def test_an_exec_plugin_supplies_the_token(server: Server, tmp_path: Path) -> None:
    plugin = tmp_path / "plugin.py"
    credential = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        "status": {"token": "from-plugin", "expirationTimestamp": "2099-01-01T00:00:00Z"},
    }
    plugin.write_text(f"import json, os\nprint(json.dumps({credential!r}))\n")
    plugin.chmod(plugin.stat().st_mode | stat.S_IEXEC)
    user = {"exec": {"command": sys.executable, "args": [str(plugin)], "apiVersion": "v1"}}
    creds = credentials.from_kubeconfig(str(kubeconfig(tmp_path / "config", server.url, user)))
    info = await creds.connection_info()  # what kopf's login gets
    assert info.token == "from-plugin"
    assert info.expiration == datetime(2099, 1, 1, tzinfo=UTC)
    clients = await kube.connect(str(tmp_path / "config"))
    try:
        await clients.get("/api")
    finally:
        await clients.close()
    assert server.seen[0]["headers"]["Authorization"] == "Bearer from-plugin"


def test_a_missing_kubeconfig_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(credentials.ConfigError):
        credentials.load()


async def test_the_lease_is_read_and_written_as_the_api_server_spells_it(
    server: Server, clients: kube.Clients
) -> None:
    path = "/apis/coordination.k8s.io/v1/namespaces/ns/leases/l"
    server.answers[("GET", path)] = (
        200,
        {
            "metadata": {"name": "l", "namespace": "ns", "resourceVersion": "7"},
            "spec": {
                "holderIdentity": "a",
                "leaseDurationSeconds": 15,
                "leaseTransitions": 2,
                "acquireTime": "2026-01-02T03:04:05.000000Z",
                "renewTime": "2026-01-02T03:04:06.250000Z",
            },
        },
    )
    leases = KubeLeases(clients, "ns", "l")
    lease = await leases.read()
    assert lease == Lease(
        holder="a",
        duration=15,
        transitions=2,
        acquire_time=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        renew_time=datetime(2026, 1, 2, 3, 4, 6, 250000, tzinfo=UTC),
        resource_version="7",
    )
    server.answers[("PUT", path)] = server.answers[("GET", path)]
    await leases.replace(lease)
    put = server.seen[-1]
    assert put["method"] == "PUT" and put["body"]["metadata"]["resourceVersion"] == "7"
    assert put["body"]["spec"] == {
        "holderIdentity": "a",
        "leaseDurationSeconds": 15,
        "leaseTransitions": 2,
        "acquireTime": "2026-01-02T03:04:05.000000Z",
        "renewTime": "2026-01-02T03:04:06.250000Z",
    }
    server.answers[("GET", path)] = status(404, 'leases.coordination.k8s.io "l" not found')
    assert await leases.read() is None
