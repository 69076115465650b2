"""kubernetes_asyncio clients, created once at start-up, and small effect helpers.

Everything here is async: nothing may block kopf's event loop.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from gaudi_operator.clients import fence

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


@dataclass
class Clients:
    api_client: client.ApiClient
    core: client.CoreV1Api
    custom: client.CustomObjectsApi

    async def close(self) -> None:
        await self.api_client.close()


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
    cfg = client.Configuration()
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=cfg)
    else:
        await config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    if server:
        cfg.tls_server_name = cfg.tls_server_name or urlsplit(cfg.host).hostname
        cfg.host = server.rstrip("/")
    # Bounded pod creation runs many requests at once; the default pool is smaller.
    cfg.connection_pool_maxsize = pool_size
    api_client = client.ApiClient(configuration=cfg)
    api_client.user_agent = user_agent(component)
    # kubernetes_asyncio's session trusts the environment: every request then reads the
    # proxy variables and ~/.netrc in a thread (a few % of the CPU at scale). The API server
    # is reached directly, as kopf's own session does.
    api_client.rest_client.pool_manager._trust_env = False
    fence.fence_session(api_client.rest_client.pool_manager)
    return Clients(
        api_client=api_client,
        core=client.CoreV1Api(api_client),
        custom=client.CustomObjectsApi(api_client),
    )


JSON_HEADERS = {"Accept": "application/json", "Content-Type": "application/json"}


async def create(clients: Clients, path: str, body: Mapping[str, Any]) -> None:
    """POST a new object and drop the answer. The generated `create_namespaced_*` methods
    build a typed model (V1Pod, CoreV1Event) from every response, which no caller reads:
    at a thousand jobs that was a large share of the reconcile passes' CPU. Errors raise
    ApiException as theirs do. `path` is the collection, e.g. /api/v1/namespaces/ns/pods."""
    await clients.api_client.call_api(
        path,
        "POST",
        header_params=dict(JSON_HEADERS),
        body=body,
        response_types_map={},
        auth_settings=["BearerToken"],
        _return_http_data_only=True,
    )


async def merge_patch_object(clients: Clients, path: str, body: Mapping[str, Any]) -> None:
    """PATCH (JSON merge patch) one object and drop the answer, as `create` does; `path`
    is the object's, e.g. /api/v1/namespaces/ns/pods/name."""
    await clients.api_client.call_api(
        path,
        "PATCH",
        header_params={"Accept": "application/json", "Content-Type": MERGE_PATCH},
        body=body,
        response_types_map={},
        auth_settings=["BearerToken"],
        _return_http_data_only=True,
    )


def core_path(namespace: str, plural: str) -> str:
    return f"/api/v1/namespaces/{namespace}/{plural}"


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
    return err.status if isinstance(err, ApiException) else None


def transient(err: BaseException) -> bool:
    """The API server is restarting, overloaded or unreachable for a moment: worth a retry
    and a line in the log, not a traceback (that is kept for errors that are bugs)."""
    if isinstance(err, ApiException):
        return err.status == 429 or (err.status or 0) >= 500
    return isinstance(err, aiohttp.ClientError | ConnectionError | TimeoutError)


def namespace_terminating(err: BaseException) -> bool:
    """The namespace is being deleted: nothing can be created there, and the job goes too."""
    return status_code(err) == 403 and "NamespaceTerminating" in str(getattr(err, "body", ""))


def api_message(err: BaseException) -> str:
    """The API server's own message (it names the field), not the raw HTTP dump."""
    if isinstance(err, ApiException) and err.body:
        import json

        try:
            return str(json.loads(err.body).get("message") or err.reason)
        except (ValueError, AttributeError):
            return str(err.body)[:500]
    return str(err)
