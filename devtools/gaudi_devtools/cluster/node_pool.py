"""Register, resize and count the simulated Gaudi nodes straight through the API server.

Thousands of nodes one ``kubectl apply`` at a time take minutes; here they go as
concurrent POSTs over a pool of keep-alive connections, authenticated with the cluster's
admin certificate. A node is created with its status (capacity, addresses), as a kubelet
registers; kwok then takes it over (conditions, heartbeats, leases).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import httpx

from gaudi_devtools.cluster import nodes

# Requests in flight: enough to keep the API server busy, well under its default
# --max-mutating-requests-inflight (200).
CONCURRENCY = 32
_TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"


class NodePoolError(RuntimeError):
    pass


async def _each(
    items: Iterable[Any], work: Callable[[Any], Awaitable[None]], concurrency: int
) -> None:
    queue: asyncio.Queue[Any] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)

    async def worker() -> None:
        while not queue.empty():
            await work(queue.get_nowait())

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def _check(r: httpx.Response, what: str) -> None:
    if r.status_code >= 400:
        raise NodePoolError(f"{what}: HTTP {r.status_code}: {r.text[:300]}")


async def _register(client: httpx.AsyncClient, doc: dict[str, Any]) -> None:
    name = doc["metadata"]["name"]
    r = await client.post("/api/v1/nodes", json=doc)
    if r.status_code != 409:
        _check(r, f"create node {name}")
        return
    # It exists (a resize of a running cluster): bring its shape up to date. Status is a
    # subresource, so it takes its own request.
    merge = {"Content-Type": "application/merge-patch+json"}
    meta = {"metadata": {"labels": doc["metadata"]["labels"]}, "spec": doc["spec"]}
    _check(
        await client.patch(f"/api/v1/nodes/{name}", json=meta, headers=merge),
        f"update node {name}",
    )
    status = {k: doc["status"][k] for k in ("capacity", "allocatable", "addresses")}
    _check(
        await client.patch(f"/api/v1/nodes/{name}/status", json={"status": status}, headers=merge),
        f"update node {name} status",
    )


async def _delete(client: httpx.AsyncClient, name: str) -> None:
    r = await client.delete(f"/api/v1/nodes/{name}")
    if r.status_code != 404:
        _check(r, f"delete node {name}")


def _client(base_url: str, tls: ssl.SSLContext, concurrency: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url,
        verify=tls,
        timeout=httpx.Timeout(60.0),
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
    )


async def _sync(base_url: str, tls: ssl.SSLContext, count: int, hpus: int, concurrency: int) -> int:
    async with _client(base_url, tls, concurrency) as client:
        docs = [nodes.gaudi_node(nodes.node_name(i), hpus, i) for i in range(count)]
        await _each(docs, lambda d: _register(client, d), concurrency)
        # Shrinking removes the highest-numbered nodes.
        r = await client.get("/api/v1/nodes", params={"labelSelector": nodes.POOL_LABEL})
        _check(r, "list nodes")
        keep = {d["metadata"]["name"] for d in docs}
        extra = [n["metadata"]["name"] for n in r.json()["items"]]
        extra = [n for n in extra if n not in keep]
        await _each(extra, lambda n: _delete(client, n), concurrency)
        return len(extra)


def sync_nodes(
    base_url: str, tls: ssl.SSLContext, count: int, hpus: int, concurrency: int = CONCURRENCY
) -> int:
    """Make the pool exactly ``count`` nodes of ``hpus`` HPUs; returns how many it deleted."""
    return asyncio.run(_sync(base_url, tls, count, hpus, concurrency))


def ready_nodes(base_url: str, tls: ssl.SSLContext) -> tuple[int, int]:
    """(Ready, all) nodes of the pool, from the server-side table: a few bytes per node
    rather than each node's whole status."""
    with httpx.Client(base_url=base_url, verify=tls, timeout=30) as client:
        r = client.get(
            "/api/v1/nodes",
            params={"labelSelector": nodes.POOL_LABEL, "includeObject": "None"},
            headers={"Accept": _TABLE},
        )
    _check(r, "list nodes")
    table = r.json()
    column = [c["name"] for c in table["columnDefinitions"]].index("Status")
    rows = table.get("rows") or []
    ready = sum(1 for row in rows if str(row["cells"][column]).split(",")[0] == "Ready")
    return ready, len(rows)
