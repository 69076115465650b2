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
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gaudi_operator.clients import kube
from gaudi_operator.observability import metrics
from gaudi_operator.runtime.expectations import Expectations
from gaudi_operator.runtime.packed import unpack
from gaudi_operator.runtime.placement import PodPlaces
from gaudi_operator.runtime.status_writer import RetrySoon
from gaudi_operator.runtime.supervision import supervise
from gaudi_operator.runtime.workqueue import WorkQueue

__all__ = ["Controller", "PassResult", "Reconciles", "RetrySoon", "Written"]

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, job name)
MAX_BACKOFF = 300.0
RETRY_SOON_SECONDS = 0.2
# A job waiting for the watch to show the pods its last pass created or deleted is woken
# by those very pod events; this is only the safety net's own pace.
EXPECTATIONS_RECHECK_SECONDS = 5.0


class PassResult(Protocol):
    """What one reconcile pass reports back to the controller."""

    @property
    def body(self) -> Mapping[str, Any] | None: ...  # the object after our own write
    @property
    def superseded(self) -> Sequence[str]: ...  # versions we wrote in the pass before `body`
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

    def forget(self, key: Key) -> None:
        """The job is gone: drop everything kept about it."""


def _meta(body: Mapping[str, Any]) -> tuple[str, str]:
    meta = body.get("metadata") or {}
    return str(meta.get("uid") or ""), str(meta.get("resourceVersion") or "")


@dataclass(frozen=True)
class Written:
    """Our last write of a job, kept until the index has seen it (read your writes).

    resourceVersions are opaque strings: never ordered, only compared for equality. The
    index lags behind our write while it still shows a version from before it (`before`);
    any other version is ours or newer, and the index copy wins.
    """

    uid: str
    before: frozenset[str]
    body: Mapping[str, Any]

    @classmethod
    def after(
        cls,
        read: Mapping[str, Any],
        body: Mapping[str, Any],
        earlier: Written | None,
        superseded: Iterable[str] = (),
    ) -> Written:
        """`read` is the copy the pass decided from; `superseded`, versions the pass
        itself wrote before `body` (an index showing one of them is behind us too)."""
        uid, rv = _meta(read)
        lagging = earlier.before if earlier is not None and earlier.uid == uid else frozenset()
        return cls(uid, lagging | {rv, *superseded}, body)

    def pick(self, indexed: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """Our copy while the index lags behind it; None once the index has caught up or
        shows another incarnation of the job (same name, new uid)."""
        uid, rv = _meta(indexed)
        return self.body if uid == self.uid and rv in self.before else None


RESYNC_TICK = 1.0  # seconds between the resync's batches


def spread(keys: Sequence[Key], period: float, tick: float) -> list[Sequence[Key]]:
    """`keys` in batches, one a tick, so that all are enqueued within `period`."""
    ticks = max(1, int(period / tick))
    size = max(1, -(-len(keys) // ticks))
    return [keys[i : i + size] for i in range(0, len(keys), size)]


def first(store: Any) -> Any:
    if store is None:
        return None
    return next(iter(store), None)


class Controller:
    def __init__(
        self,
        reconciler: Reconciles,
        *,
        workers: int = 8,
        resync_seconds: float = 30,
        expectations: Expectations | None = None,
    ):
        self.reconciler = reconciler
        # Shared with the reconciler, which records what its passes create and delete.
        self.expectations = expectations if expectations is not None else Expectations()
        # Which jobs a node, a pod or a new scale-out node concerns (no walk of them all).
        self.places = PodPlaces()
        metrics.track_cache("pod_places", lambda: len(self.places))
        self.queue = WorkQueue()
        self.phases = metrics.PhaseTracker()
        self._workers = workers
        self._resync = resync_seconds
        self._tasks: list[asyncio.Task[None]] = []
        self._written: dict[Key, Written] = {}
        self._failures: dict[Key, int] = {}
        metrics.track_cache("controller_written", lambda: len(self._written))
        metrics.track_cache("controller_failures", lambda: len(self._failures))
        metrics.track_cache("workqueue_scheduled", self.queue.scheduled)
        metrics.track_cache("expectations", lambda: len(self.expectations))
        # kopf indices, bound by the first handler call (they are live views).
        self.jobs: Mapping[Key, Any] | None = None
        self.pods: Mapping[Key, Any] | None = None
        self.services: Mapping[Key, Any] | None = None

    def bind(
        self, jobs: Mapping[Key, Any], pods: Mapping[Key, Any], services: Mapping[Key, Any]
    ) -> None:
        self.jobs, self.pods, self.services = jobs, pods, services

    def start(self) -> None:
        if self._tasks:
            return  # started already (a retried start-up)
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

    def observe_job(self, key: Key) -> None:
        """A job watch event, after kopf updated the job index: our last write of the job
        is dropped once the index shows it (it is a whole job, kept only while the index
        lags; otherwise every job written and not passed again kept one until its resync)."""
        written = self._written.get(key)
        if written is None:
            return
        indexed = unpack(first((self.jobs or {}).get(key)))
        if indexed is None or written.pick(indexed) is None:
            del self._written[key]

    def observe_pod(
        self,
        key: Key,
        name: str,
        uid: str,
        going: bool,
        *,
        node: str | None = None,
        unplaced: bool = False,
        gone: bool = False,
        index: int | None = None,
    ) -> None:
        """A pod watch event, after kopf updated the pod index (expectations, places)."""
        self.expectations.observe(key, name, uid, going, index)
        self.places.update(key, uid, name, node, unplaced, gone)

    def forget(self, key: Key) -> None:
        self.reconciler.forget(key)
        self.expectations.forget(key)
        self._written.pop(key, None)
        self._failures.pop(key, None)
        self.queue.forget(key)
        self.phases.forget(key)

    async def _resync_loop(self) -> None:
        """Every job once a period, spread over it: enqueued all at once, the burst put
        a new job's first pass behind a pass of every job that runs (a new job's latency
        then grew with the cluster)."""
        await asyncio.sleep(self._resync)
        while True:
            keys = list(self.jobs or ())
            start = time.monotonic()
            for batch in spread(keys, self._resync, RESYNC_TICK):
                for key in batch:
                    self.enqueue(key)
                await asyncio.sleep(RESYNC_TICK)
            await asyncio.sleep(max(0.0, self._resync - (time.monotonic() - start)))

    async def _work(self) -> None:
        while True:
            key = await self.queue.get()
            metrics.QUEUE_DEPTH.set(len(self.queue))
            try:
                await self.process(key)
            finally:
                self.queue.done(key)

    async def process(self, key: Key) -> None:
        indexed = unpack(first((self.jobs or {}).get(key)))
        if indexed is None:
            self.forget(key)  # deleted
            return
        if not self.expectations.satisfied(key):
            # The pod index does not show yet what the last pass created or deleted: a
            # pass now would create those pods again and count from stale numbers. The
            # pod events that show them wake the job; this is the safety net.
            self.queue.add_after(key, EXPECTATIONS_RECHECK_SECONDS)
            return
        written = self._written.get(key)
        body = written.pick(indexed) if written is not None else None
        if body is None:
            self._written.pop(key, None)
            body = indexed
        observed: list[Any] = list((self.pods or {}).get(key) or ())
        service = first((self.services or {}).get(key)) is not None
        try:
            with metrics.RECONCILE_SECONDS.time():
                result = await self.reconciler.reconcile(body, observed, service)
        except asyncio.CancelledError:
            raise
        except RetrySoon as why:
            log.debug("%s/%s: %s; again shortly", *key, why)
            self._written.pop(key, None)
            self.queue.add_after(key, RETRY_SOON_SECONDS)
            return
        except Exception as err:
            if kube.namespace_terminating(err):
                log.debug("%s/%s: namespace terminating, not retrying", *key)
                return
            n = self._failures.get(key, 0) + 1
            self._failures[key] = n
            delay = min(MAX_BACKOFF, 0.5 * 2**n)
            metrics.RECONCILE_ERRORS.labels(kind=type(err).__name__).inc()
            if kube.transient(err):
                log.warning("reconciling %s/%s: %r (retry in %.1fs)", *key, err, delay)
            else:
                log.exception("reconciling %s/%s failed (retry in %.1fs)", *key, delay)
            self.queue.add_after(key, delay)
            return
        self._failures.pop(key, None)
        if first((self.jobs or {}).get(key)) is None:
            self.forget(key)  # deleted while the pass ran: keep nothing for it
            return
        if result.body is not None:
            self._written[key] = Written.after(
                body, result.body, self._written.get(key), result.superseded
            )
        self.phases.set(key, result.phase, workers=result.workers, conditions=result.conditions)
        if result.requeue_after is not None:
            self.queue.add_after(key, result.requeue_after + 0.1)
