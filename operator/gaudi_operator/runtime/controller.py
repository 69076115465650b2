"""Runs reconcile passes: a bounded pool of workers over a keyed work queue, plus a
periodic resync that re-queues every job (level-based: events only make it faster).

Why not a kopf daemon or timer per job: both make kopf put a finalizer on every job, so
deleting a job would hang whenever the operator is down. This needs no finalizer; the
children go with the job through their owner references.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from gaudi_operator.clients import kube
from gaudi_operator.observability import metrics
from gaudi_operator.runtime.supervision import supervise
from gaudi_operator.runtime.workqueue import WorkQueue

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, job name)
MAX_BACKOFF = 300.0


class PassResult(Protocol):
    """What one reconcile pass reports back to the controller."""

    @property
    def body(self) -> Mapping[str, Any] | None: ...  # the object after our own write
    @property
    def phase(self) -> str: ...
    @property
    def requeue_after(self) -> float | None: ...
    @property
    def workers(self) -> Mapping[str, int]: ...  # desired, ready, pending: per-job gauges
    @property
    def conditions(self) -> Mapping[str, bool]: ...


class Reconciles(Protocol):
    async def reconcile(
        self, body: Mapping[str, Any], observed: Iterable[Any], service_exists: bool
    ) -> PassResult: ...


def newest(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The more recent of two copies of one object, by resourceVersion (read your writes)."""
    if a is None or b is None:
        return a or b

    def rv(x: Mapping[str, Any]) -> int:
        try:
            return int((x.get("metadata") or {}).get("resourceVersion") or 0)
        except ValueError:
            return 0

    if (a.get("metadata") or {}).get("uid") != (b.get("metadata") or {}).get("uid"):
        return a  # a recreated job: the index copy wins
    return a if rv(a) >= rv(b) else b


def first(store: Any) -> Any:
    if store is None:
        return None
    return next(iter(store), None)


class Controller:
    def __init__(self, reconciler: Reconciles, *, workers: int = 8, resync_seconds: float = 30):
        self.reconciler = reconciler
        self.queue = WorkQueue()
        self.phases = metrics.PhaseTracker()
        self._workers = workers
        self._resync = resync_seconds
        self._tasks: list[asyncio.Task[None]] = []
        self._written: dict[Key, Mapping[str, Any]] = {}
        self._failures: dict[Key, int] = {}
        # kopf indices, bound by the first handler call (they are live views).
        self.jobs: Mapping[Key, Any] | None = None
        self.pods: Mapping[Key, Any] | None = None
        self.services: Mapping[Key, Any] | None = None

    def bind(
        self, jobs: Mapping[Key, Any], pods: Mapping[Key, Any], services: Mapping[Key, Any]
    ) -> None:
        self.jobs, self.pods, self.services = jobs, pods, services

    def start(self) -> None:
        for i in range(self._workers):
            self._tasks.append(supervise(f"worker-{i}", self._work))
        self._tasks.append(supervise("resync", self._resync_loop))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self.queue.close()

    def enqueue(self, key: Key) -> None:
        self.queue.add(key)
        metrics.QUEUE_DEPTH.set(len(self.queue))

    def forget(self, key: Key) -> None:
        self._written.pop(key, None)
        self._failures.pop(key, None)
        self.queue.forget(key)
        self.phases.forget(key)

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self._resync)
            for key in list(self.jobs or ()):
                self.enqueue(key)

    async def _work(self) -> None:
        while True:
            key = await self.queue.get()
            metrics.QUEUE_DEPTH.set(len(self.queue))
            try:
                await self.process(key)
            finally:
                self.queue.done(key)

    async def process(self, key: Key) -> None:
        body = newest(first((self.jobs or {}).get(key)), self._written.get(key))
        if body is None or first((self.jobs or {}).get(key)) is None:
            self.forget(key)  # deleted
            return
        observed: list[Any] = list((self.pods or {}).get(key) or ())
        service = first((self.services or {}).get(key)) is not None
        try:
            with metrics.RECONCILE_SECONDS.time():
                result = await self.reconciler.reconcile(body, observed, service)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            if kube.namespace_terminating(err):
                log.debug("%s/%s: namespace terminating, not retrying", *key)
                return
            n = self._failures.get(key, 0) + 1
            self._failures[key] = n
            delay = min(MAX_BACKOFF, 0.5 * 2**n)
            metrics.RECONCILE_ERRORS.labels(kind=type(err).__name__).inc()
            log.exception("reconciling %s/%s failed (retry in %.1fs)", *key, delay)
            self.queue.add_after(key, delay)
            return
        self._failures.pop(key, None)
        if result.body is not None:
            self._written[key] = result.body
        self.phases.set(key, result.phase, workers=result.workers, conditions=result.conditions)
        if result.requeue_after is not None:
            self.queue.add_after(key, result.requeue_after + 0.1)
