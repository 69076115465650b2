"""Kubernetes Events on a job: every decision the operator makes is posted as one.

An event the API server could not take (it restarts, it is overloaded, the connection
broke) is posted again in the background, as client-go's recorder does: up to
`TRIES` times, `RETRY_SECONDS` apart, under the same name, so a try that did reach the
server makes the next one a 409 and nothing is told twice. An event the server refused
for what it says (4xx) is not tried again. The fence stays in the way of every try: a
leader past its renew deadline posts once it has renewed, a deposed one never.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from gaudi_operator import api
from gaudi_operator.clients import kube
from gaudi_operator.clients.kube import Clients

log = logging.getLogger(__name__)

EVENT_SOURCE = "gaudi-operator"
# client-go's record package: maxTriesPerEvent = 12, defaultSleepDuration = 10 s (the
# first retry after a random part of it, so a restarted API server is not hit at once).
TRIES = 12
RETRY_SECONDS = 10.0
# Events waiting for their next try; beyond this many (a long outage) new ones are dropped
# rather than held in memory.
MAX_PENDING = 1000
_pending: set[asyncio.Task[None]] = set()


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
    path = kube.core_path(str(meta.get("namespace")), "events")
    if await _try(clients, path, body) or len(_pending) >= MAX_PENDING:
        return
    task = asyncio.ensure_future(_retry(clients, path, body))
    _pending.add(task)
    task.add_done_callback(_pending.discard)


async def _try(clients: Clients, path: str, body: Mapping[str, Any]) -> bool:
    """POST the event once: True when it is done with (posted, or never to be posted),
    False when it is worth another try."""
    what = f"{body['reason']} on {body['involvedObject']['name']}"
    try:
        await kube.create(clients, path, body)
        return True
    except Exception as err:  # events must never break a reconcile pass
        if kube.status_code(err) == 409:  # an earlier try got there: the name is its own
            return True
        # kube.transient: a 5xx, a 429, a broken connection, a timeout; FencedWrite among
        # them, so past the renew deadline the fence holds every try until the Lease is
        # renewed, and a deposed leader never gets through (it exits).
        if kube.transient(err):
            log.info("event %s not posted yet (%s): trying again", what, err)
            return False
        log.warning("could not post event %s: %s", what, err)
        return True


async def _retry(clients: Clients, path: str, body: Mapping[str, Any]) -> None:
    delay = random.uniform(0, RETRY_SECONDS)
    for _ in range(TRIES - 1):
        await asyncio.sleep(delay)
        if await _try(clients, path, body):
            return
        delay = RETRY_SECONDS
    log.warning(
        "gave up on event %s on %s after %d tries",
        body["reason"],
        body["involvedObject"]["name"],
        TRIES,
    )


async def drain() -> None:
    """Wait for every event still being tried (tests; the operator's shutdown drops them)."""
    while _pending:
        await asyncio.gather(*list(_pending), return_exceptions=True)
