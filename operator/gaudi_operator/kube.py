"""kubernetes_asyncio clients, created once at start-up, and small effect helpers.

Everything here is async: nothing may block kopf's event loop.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from gaudi_operator import api

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
EVENT_SOURCE = "gaudi-operator"


@dataclass
class Clients:
    api_client: client.ApiClient
    core: client.CoreV1Api
    custom: client.CustomObjectsApi

    async def close(self) -> None:
        await self.api_client.close()


async def connect(kubeconfig: str | None = None, pool_size: int = 64) -> Clients:
    """In-cluster service account when there is one, else the kubeconfig."""
    cfg = client.Configuration()
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=cfg)
    else:
        await config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    # Bounded pod creation runs many requests at once; the default pool is smaller.
    cfg.connection_pool_maxsize = pool_size
    api_client = client.ApiClient(configuration=cfg)
    return Clients(
        api_client=api_client,
        core=client.CoreV1Api(api_client),
        custom=client.CustomObjectsApi(api_client),
    )


def status_code(err: BaseException) -> int | None:
    return err.status if isinstance(err, ApiException) else None


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


async def post_event(
    clients: Clients,
    job: Mapping[str, Any],
    type_: str,
    reason: str,
    message: str,
) -> None:
    """A core/v1 Event on the job; failures are logged, never raised (events are best effort)."""
    meta = job.get("metadata") or {}
    now = datetime.now(UTC)
    stamp = api.to_rfc3339(now)
    body = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": f"{meta.get('name')}.{time.time_ns():x}",
            "namespace": meta.get("namespace"),
        },
        "involvedObject": {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": EVENT_SOURCE},
        "reportingComponent": EVENT_SOURCE,
        "reportingInstance": os.environ.get("HOSTNAME", EVENT_SOURCE),
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "eventTime": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "action": reason,
        "count": 1,
    }
    try:
        await clients.core.create_namespaced_event(meta.get("namespace"), body)
    except Exception as err:  # events must never break a reconcile pass
        log.warning("could not post event %s on %s: %s", reason, meta.get("name"), err)
