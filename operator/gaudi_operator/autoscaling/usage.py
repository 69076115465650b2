"""The HPUs held on each node, for the autoscaler's capacity check: one list and then a
watch of the cluster's bound, unfinished pods, folded into `capacity.HpuLedger`.

Before, every scale-up listed every live pod of the cluster and kept them whole for a few
seconds: its cost and the operator's memory grew with what already ran. Now a scale-up
reads one number per node, and memory is a (node, HPUs) pair per pod that holds HPUs.

The watch starts with the first scale-up that asks (a cluster without autoscaled jobs
never pays for it). The API server filters it (`spec.nodeName!=`, not Succeeded/Failed),
so a pod enters the watch when it is bound and leaves it, as a DELETED event, when it
finishes or is gone. The answers are read as JSON dicts.

Where the operator may not list pods cluster-wide (the chart's `watchNamespaces`), the
room is counted from the watched namespaces' pods at each check, as before, which is
optimistic (other namespaces' pods are not seen); a worker that cannot fit stays Pending
and the pending timeout rolls the scale-up back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

import aiohttp

from gaudi_operator.autoscaling import capacity
from gaudi_operator.clients import kube
from gaudi_operator.observability import metrics

log = logging.getLogger(__name__)

# Bound and not finished: what holds HPUs (a pod may be Pending after its binding).
HOLDING = "spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed"
PAGE = 500  # pods per page of the first list: bounded memory while it is read
WATCH_SECONDS = 300  # the API server ends each watch after this; it is resumed
SYNC_TIMEOUT = 30.0  # a scale-up waits this long for the first list, then goes on without


class Forbidden(Exception):
    """The operator may not list pods in every namespace."""


class HpuUsage:
    def __init__(self, clients: kube.Clients, namespaces: Callable[[], Iterable[str]]) -> None:
        self.clients = clients
        self.namespaces = namespaces  # the watched jobs' namespaces (the fallback)
        self.ledger = capacity.HpuLedger()
        self._synced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._cluster_wide = True
        metrics.track_cache("hpu_holding_pods", lambda: len(self.ledger))

    async def used_by_node(self) -> dict[str, int]:
        """HPUs held per node. Raises when the cluster cannot be read."""
        if not self._cluster_wide:
            return capacity.used_by_node(await self._list_namespaces())
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="hpu-usage")
        if self._synced.is_set():
            return self.ledger.by_node()
        sync = asyncio.ensure_future(self._synced.wait())
        done, _ = await asyncio.wait(
            {sync, self._task}, timeout=SYNC_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        if sync not in done:
            sync.cancel()
            if self._task in done:
                self._task.result()  # its error, or Forbidden: try again below
            else:
                raise TimeoutError("the pod list for the capacity check took too long")
        if not self._cluster_wide:
            return capacity.used_by_node(await self._list_namespaces())
        return self.ledger.by_node()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    # --- list and watch -----------------------------------------------------------------

    async def _run(self) -> None:
        """List, then watch from the list's resourceVersion; list again when the watch
        lost its place (410 Gone) or the connection broke."""
        while True:
            try:
                version = await self._list_all()
            except Forbidden:
                log.info(
                    "capacity check: pods are counted per watched namespace (no RBAC "
                    "to list them cluster-wide)"
                )
                self._cluster_wide = False
                return
            except asyncio.CancelledError:
                raise
            except Exception as err:
                if not self._synced.is_set():
                    raise  # the first list: the scale-up that waits for it says why
                log.info("capacity list of pods failed (%s); trying again", err)
                await asyncio.sleep(5.0)
                continue
            self._synced.set()
            try:
                while version:
                    version = await self._watch(version)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # a broken stream: list again after a moment
                log.info("capacity watch of pods ended (%s); listing again", err)
                await asyncio.sleep(1.0)

    async def _list_all(self) -> str:
        pods: list[dict[str, Any]] = []
        token, version = "", ""
        while True:
            try:
                page = await self.clients.get(
                    "/api/v1/pods", {"fieldSelector": HOLDING, "limit": PAGE, "continue": token}
                )
            except Exception as err:
                if kube.status_code(err) == 403:
                    raise Forbidden() from err
                raise
            # Only what the ledger needs is kept of each page.
            pods += [_slim(p) for p in page.get("items") or []]
            meta = page.get("metadata") or {}
            token, version = meta.get("continue") or "", meta.get("resourceVersion") or ""
            if not token:
                break
        self.ledger.replace(pods)
        return version

    async def _watch(self, version: str) -> str:
        """One watch request; the resourceVersion to resume from, or "" to list again."""
        params = {
            "fieldSelector": HOLDING,
            "resourceVersion": version,
            "allowWatchBookmarks": True,
            "timeoutSeconds": WATCH_SECONDS,
        }
        limits = aiohttp.ClientTimeout(sock_connect=10, sock_read=WATCH_SECONDS + 30)
        async with contextlib.aclosing(
            self.clients.watch("/api/v1/pods", params, limits)
        ) as events:
            async for event in events:
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    return ""  # 410 Gone and the like: the place is lost
                version = (obj.get("metadata") or {}).get("resourceVersion") or version
                self.ledger.apply(kind, obj)
        return version

    async def _list_namespaces(self) -> list[dict[str, Any]]:
        pods: list[dict[str, Any]] = []
        for ns in sorted(set(self.namespaces())):
            page = await self.clients.get(kube.core_path(ns, "pods"), {"fieldSelector": HOLDING})
            pods += [_slim(p) for p in page.get("items") or []]
        return pods


def _slim(pod: dict[str, Any]) -> dict[str, Any]:
    """The fields `capacity.holding` reads; the rest of a listed page is dropped at once."""
    spec = pod.get("spec") or {}
    return {
        "metadata": {"uid": (pod.get("metadata") or {}).get("uid")},
        "spec": {
            "nodeName": spec.get("nodeName"),
            "containers": [{"resources": c.get("resources")} for c in spec.get("containers") or []],
            "initContainers": [
                {"resources": c.get("resources")} for c in spec.get("initContainers") or []
            ],
        },
        "status": {"phase": (pod.get("status") or {}).get("phase")},
    }
