"""Kubernetes Events on a job: every decision the operator makes is posted as one."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from gaudi_operator import api
from gaudi_operator.clients import kube
from gaudi_operator.clients.kube import Clients

log = logging.getLogger(__name__)

EVENT_SOURCE = "gaudi-operator"


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
        await kube.create(clients, kube.core_path(str(meta.get("namespace")), "events"), body)
    except Exception as err:  # events must never break a reconcile pass
        log.warning("could not post event %s on %s: %s", reason, meta.get("name"), err)
