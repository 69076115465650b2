"""Register, resize and count the simulated Gaudi nodes straight through the API server.

Thousands of nodes one ``kubectl apply`` at a time take minutes; here they go as
concurrent POSTs, one keep-alive connection per worker thread (plain ``http.client``:
httpx's async pool spent more CPU finding a free connection than sending), authenticated
with the cluster's admin certificate. A node is created with its status (capacity,
addresses), as a kubelet registers; kwok then takes it over (conditions, heartbeats,
leases).
"""

from __future__ import annotations

import http.client
import json
import queue
import ssl
import threading
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from gaudi_devtools.cluster import nodes

# Requests in flight: enough to keep the API server busy, well under its default
# --max-mutating-requests-inflight (200).
CONCURRENCY = 32
_TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"


class NodePoolError(RuntimeError):
    pass


class _Connection:
    """One keep-alive HTTPS connection to the API server, re-opened when it drops."""

    def __init__(self, base_url: str, tls: ssl.SSLContext) -> None:
        url = urlsplit(base_url)
        self.host, self.port, self.tls = url.hostname or "127.0.0.1", url.port or 443, tls
        self.conn: http.client.HTTPSConnection | None = None

    def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPSConnection(
                    self.host, self.port, context=self.tls, timeout=60
                )
            try:
                self.conn.request(method, path, body=data, headers=headers)
                r = self.conn.getresponse()
                return r.status, r.read()
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def _check(status: int, text: bytes, what: str) -> None:
    if status >= 400:
        raise NodePoolError(f"{what}: HTTP {status}: {text[:300].decode(errors='replace')}")


def _each(
    base_url: str,
    tls: ssl.SSLContext,
    items: Iterable[Any],
    work: Callable[[_Connection, Any], None],
    concurrency: int,
) -> None:
    """``work`` on every item from ``concurrency`` threads, each with its own connection;
    the first error stops the rest and is raised."""
    todo: queue.SimpleQueue[Any] = queue.SimpleQueue()
    count = 0
    for item in items:
        todo.put(item)
        count += 1
    errors: list[BaseException] = []

    def worker() -> None:
        conn = _Connection(base_url, tls)
        try:
            while not errors:
                try:
                    item = todo.get_nowait()
                except queue.Empty:
                    return
                work(conn, item)
        except BaseException as e:  # handed to the caller's thread
            errors.append(e)
        finally:
            conn.close()

    threads = [threading.Thread(target=worker) for _ in range(min(concurrency, count))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _register(conn: _Connection, doc: dict[str, Any]) -> None:
    name = doc["metadata"]["name"]
    status, text = conn.request("POST", "/api/v1/nodes", doc)
    if status != 409:
        _check(status, text, f"create node {name}")
        return
    # It exists (a resize of a running cluster): bring its shape up to date. Status is a
    # subresource, so it takes its own request.
    merge = "application/merge-patch+json"
    meta = {"metadata": {"labels": doc["metadata"]["labels"]}, "spec": doc["spec"]}
    path = f"/api/v1/nodes/{quote(name)}"
    _check(*conn.request("PATCH", path, meta, merge), f"update node {name}")
    shape = {k: doc["status"][k] for k in ("capacity", "allocatable", "addresses")}
    _check(*conn.request("PATCH", f"{path}/status", {"status": shape}, merge), f"update {name}")


def _delete(conn: _Connection, name: str) -> None:
    status, text = conn.request("DELETE", f"/api/v1/nodes/{quote(name)}")
    if status != 404:
        _check(status, text, f"delete node {name}")


# The kwok nodes of the pool: real (kubelet) nodes carry the pool label too, and are
# neither counted nor removed here.
SIMULATED = f"{nodes.POOL_LABEL},!{nodes.REAL_LABEL}"


def sync_nodes(
    base_url: str, tls: ssl.SSLContext, count: int, hpus: int, concurrency: int = CONCURRENCY
) -> int:
    """Make the pool exactly ``count`` nodes of ``hpus`` HPUs; returns how many it deleted."""
    docs = [nodes.gaudi_node(nodes.node_name(i), hpus, i) for i in range(count)]
    _each(base_url, tls, docs, _register, concurrency)
    # Shrinking removes the highest-numbered nodes.
    conn = _Connection(base_url, tls)
    try:
        status, text = conn.request("GET", f"/api/v1/nodes?labelSelector={quote(SIMULATED)}")
    finally:
        conn.close()
    _check(status, text, "list nodes")
    keep = {d["metadata"]["name"] for d in docs}
    extra = [n["metadata"]["name"] for n in json.loads(text)["items"]]
    extra = [n for n in extra if n not in keep]
    _each(base_url, tls, extra, _delete, concurrency)
    return len(extra)


def ready_nodes(base_url: str, tls: ssl.SSLContext) -> tuple[int, int]:
    """(Ready, all) nodes of the pool, from the server-side table: a few bytes per node
    rather than each node's whole status."""
    with httpx.Client(base_url=base_url, verify=tls, timeout=30) as client:
        r = client.get(
            "/api/v1/nodes",
            params={"labelSelector": SIMULATED, "includeObject": "None"},
            headers={"Accept": _TABLE},
        )
    _check(r.status_code, r.content, "list nodes")
    table = r.json()
    column = [c["name"] for c in table["columnDefinitions"]].index("Status")
    rows = table.get("rows") or []
    ready = sum(1 for row in rows if str(row["cells"][column]).split(",")[0] == "Ready")
    return ready, len(rows)
