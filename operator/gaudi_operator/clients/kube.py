"""The operator's Kubernetes API client (JSON over aiohttp), created once at start-up,
and small effect helpers.

Everything here is async: nothing may block kopf's event loop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import kopf

from gaudi_operator.clients import credentials, fence

log = logging.getLogger(__name__)

# This process's name in every request's User-Agent, so the API server's audit log says
# which replica sent a write: `gaudi3 operator` sets it to the leader-election identity.
_identity = socket.gethostname()


def set_identity(identity: str) -> None:
    global _identity
    _identity = identity


def user_agent(component: str) -> str:
    """`gaudi-operator/<identity> (<component>)`: component is kopf, operator or lease."""
    return f"gaudi-operator/{_identity} ({component})"


MERGE_PATCH = "application/merge-patch+json"
JSON = "application/json"


class ApiError(Exception):
    """A non-2xx answer of the API server. `body` is its text (a Status object, as JSON,
    whose `message` names what is wrong)."""

    def __init__(self, status: int, reason: str, body: str = "") -> None:
        super().__init__(status, reason, body)
        self.status, self.reason, self.body = status, reason, body

    def __str__(self) -> str:
        return f"HTTP {self.status} {self.reason}: {api_message(self)}"


Params = Mapping[str, str | int | bool | None]


def _query(params: Params | None) -> dict[str, str] | None:
    if not params:
        return None
    # aiohttp refuses bools; the API server wants true/false.
    return {
        k: ("true" if v else "false") if isinstance(v, bool) else str(v)
        for k, v in params.items()
        if v is not None and v != ""
    }


class Clients:
    """The operator's API client: JSON over one fenced aiohttp session, no generated
    models (issue 21: kubernetes_asyncio's ~800 classes were most of the idle memory).
    Paths are the API's own (`core_path`, `custom_path`); answers are dicts."""

    def __init__(self, session: aiohttp.ClientSession, creds: credentials.Credentials) -> None:
        self.session = session
        self.creds = creds
        self.server = creds.info.server
        self.server_hostname = creds.server_hostname

    async def close(self) -> None:
        await self.session.close()

    @contextlib.asynccontextmanager
    async def open(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        body: Any = None,
        content_type: str = JSON,
        client_timeout: aiohttp.ClientTimeout | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One request; the response once its status is known to be 2xx."""
        headers = {"Accept": JSON}
        if self.creds.token is not None:
            token = await self.creds.token.get()
            if token:
                headers["Authorization"] = f"Bearer {token}"
        data = None
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), content_type
        async with self.session.request(
            method,
            self.server + path,
            params=_query(params),
            data=data,
            headers=headers,
            timeout=client_timeout or _NO_TIMEOUT,
            server_hostname=self.server_hostname,
        ) as resp:
            if resp.status >= 300:
                if resp.status == 401 and self.creds.token is not None:
                    self.creds.token.expire()  # rotated: read it again next time
                raise ApiError(resp.status, resp.reason or "", await resp.text())
            yield resp

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        body: Any = None,
        content_type: str = JSON,
        client_timeout: aiohttp.ClientTimeout | None = None,
        answer: bool = True,
    ) -> Any:
        """The answer as JSON (None when empty, or not wanted: then it is not parsed,
        which at a thousand jobs' pod creations is worth it). It is always read to the
        end: aiohttp reuses a connection only once its answer has been read."""
        async with self.open(
            method,
            path,
            params=params,
            body=body,
            content_type=content_type,
            client_timeout=client_timeout,
        ) as resp:
            data = await resp.read()
        return json.loads(data) if data and answer else None

    async def get(
        self,
        path: str,
        params: Params | None = None,
        *,
        client_timeout: aiohttp.ClientTimeout | None = None,
    ) -> dict[str, Any]:
        """An object, or a list (`items`, `metadata.continue`) with query `params`."""
        got = await self.request("GET", path, params=params, client_timeout=client_timeout)
        return dict(got or {})

    async def post(self, path: str, body: Mapping[str, Any], params: Params | None = None) -> None:
        """Create; the answer is dropped unread (no caller needs the created object)."""
        await self.request("POST", path, body=body, params=params, answer=False)

    async def patch(
        self,
        path: str,
        body: Mapping[str, Any],
        content_type: str = MERGE_PATCH,
        *,
        answer: bool = True,
    ) -> dict[str, Any]:
        """The patched object (an empty dict when `answer` is False)."""
        got = await self.request("PATCH", path, body=body, content_type=content_type, answer=answer)
        return dict(got or {})

    async def delete(
        self, path: str, body: Mapping[str, Any] | None = None, params: Params | None = None
    ) -> None:
        await self.request("DELETE", path, body=body, params=params, answer=False)

    async def watch(
        self, path: str, params: Params, client_timeout: aiohttp.ClientTimeout | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """The events of one watch request, until the API server ends it. Use it inside
        `contextlib.aclosing` so that leaving early releases the connection."""
        async with self.open(
            "GET", path, params={**params, "watch": True}, client_timeout=client_timeout
        ) as resp:
            while line := await resp.content.readline():
                yield json.loads(line)


# kubernetes_asyncio's default, kept: no time limit unless a caller sets one (the leader
# election and the loops bound their own waits).
_NO_TIMEOUT = aiohttp.ClientTimeout()


async def connect(
    kubeconfig: str | None = None,
    pool_size: int = 64,
    *,
    component: str = "operator",
    server: str | None = None,
) -> Clients:
    """In-cluster service account when there is one, else the kubeconfig. Every write goes
    through the leader's fence (clients/fence.py). `server` dials another address for the
    same API server (its certificate is still checked against the configured name)."""
    creds = credentials.load(kubeconfig)
    if server:
        name = creds.server_hostname or urlsplit(creds.info.server).hostname
        creds = replace(creds, info=replace(creds.info, server=server.rstrip("/")))
        creds = replace(creds, server_hostname=name)
    session = session_for(creds.info, component, limit=pool_size)
    return Clients(session, creds)


def session_for(
    info: kopf.ConnectionInfo, component: str, *, limit: int = 0
) -> aiohttp.ClientSession:
    """The one way a session to the API server is built (ours and kopf's): TLS and static
    credentials from `info`, our User-Agent, every request through the fence. No
    trust_env: the API server is reached directly, and trusting the environment made
    every request read the proxy variables and ~/.netrc in a thread."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, ssl=info.as_ssl_context()),
        headers={**info.as_http_headers(), "User-Agent": user_agent(component)},
        request_class=fence.FencedRequest,
        # A watch event holds a whole object: etcd allows 1.5 MiB.
        read_bufsize=2**21,
    )


async def create(clients: Clients, path: str, body: Mapping[str, Any]) -> None:
    """POST a new object and drop the answer. `path` is the collection, e.g.
    /api/v1/namespaces/ns/pods. Errors raise ApiError."""
    await clients.post(path, body)


async def merge_patch_object(clients: Clients, path: str, body: Mapping[str, Any]) -> None:
    """PATCH (JSON merge patch) one object and drop the answer, as `create` does; `path`
    is the object's, e.g. /api/v1/namespaces/ns/pods/name."""
    await clients.patch(path, body, answer=False)


def _path(prefix: str, namespace: str | None, plural: str, name: str, sub: str) -> str:
    parts = [prefix]
    if namespace:
        parts += ["namespaces", quote(namespace, safe="")]
    parts.append(plural)
    if name:
        parts.append(quote(name, safe=""))
    if sub:
        parts.append(sub)
    return "/".join(parts)


def core_path(namespace: str | None, plural: str, name: str = "", sub: str = "") -> str:
    """/api/v1/[namespaces/<ns>/]<plural>[/<name>[/<sub>]]"""
    return _path("/api/v1", namespace, plural, name, sub)


def custom_path(
    group: str, version: str, namespace: str | None, plural: str, name: str = "", sub: str = ""
) -> str:
    """/apis/<group>/<version>/[namespaces/<ns>/]<plural>[/<name>[/<sub>]]"""
    return _path(f"/apis/{group}/{version}", namespace, plural, name, sub)


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns `old` into `new`.

    Nested objects are diffed, so a key the new value no longer has is sent as null: a
    merge patch merges objects, and writing only the new object would keep the old one's
    other keys (a NodeLost `lastFailure` would keep an earlier OOM's `exitCode`).
    """
    patch: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key)
        if before == value:
            continue
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            patch[key] = merge_patch(before, value)
        else:
            patch[key] = value
    patch.update({key: None for key in old if key not in new})
    return patch


def status_code(err: BaseException) -> int | None:
    return err.status if isinstance(err, ApiError) else None


def transient(err: BaseException) -> bool:
    """The API server is restarting, overloaded or unreachable for a moment: worth a retry
    and a line in the log, not a traceback (that is kept for errors that are bugs)."""
    if isinstance(err, ApiError):
        return err.status == 429 or err.status >= 500
    return isinstance(err, aiohttp.ClientError | ConnectionError | TimeoutError)


def namespace_terminating(err: BaseException) -> bool:
    """The namespace is being deleted: nothing can be created there, and the job goes too."""
    return status_code(err) == 403 and "NamespaceTerminating" in str(getattr(err, "body", ""))


def api_message(err: BaseException) -> str:
    """The API server's own message (it names the field), not the raw HTTP dump."""
    if isinstance(err, ApiError):
        try:
            return str(json.loads(err.body).get("message") or err.reason)
        except (ValueError, AttributeError):  # not a Status object: a proxy's page, nothing
            return str(err.body)[:500] or err.reason
    return str(err)
