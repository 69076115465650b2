"""The stall clock: one loop for all jobs reads every running job's training step from
Prometheus, keeps when each last advanced (in memory, `signals.CLOCKS`, and in the
operator's metrics), and wakes a job whose step has not moved for
`failurePolicy.stallTimeoutSeconds`; its pass decides (`policy.stall_failure`).

A sweep sends one query per Prometheus for every job at once (the operator's own series,
limited to the jobs' namespaces), so a slow Prometheus costs a sweep one timeout, not one
per job. `status.progress` is written only on a transition or every
`status_interval` seconds (`failover.progress.should_write`), through the one status
writer (`runtime.status_writer`, as `STALL_CLOCK`): at rest a training job costs no API
writes but that record.

After a start-up (or a new leader), a job's clock is rebuilt from the step's history: one
range query over the last stall timeout (`progress.from_history`), without writing. The
rebuilt advance is never earlier than the real one, so it cannot find a stall that is not
there, and it is late by at most one query step (a hundredth of the timeout); when that
query fails, the clock starts at the first read (a stall found at most one timeout late).

No kopf timer: that would put a finalizer on every job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from gaudi_operator import api
from gaudi_operator.api import ConditionType, GaudiTrainingJobSpec, Phase
from gaudi_operator.clients import kube
from gaudi_operator.clients.prometheus import (
    PrometheusClient,
    PromQLError,
    URLNotAllowed,
    choose_url,
)
from gaudi_operator.clients.promql import DEFAULT_NAMESPACE_LABEL, scope_query_to_any
from gaudi_operator.failover.progress import (
    JobClock,
    Key,
    Progress,
    ProgressClocks,
    Recorded,
    advance,
    from_history,
    history_window,
    should_write,
    stall_due,
    status_progress,
)
from gaudi_operator.failover.signals import CLOCKS, PROBES, PrometheusProbes
from gaudi_operator.observability import metrics
from gaudi_operator.runtime.packed import unpack
from gaudi_operator.runtime.status_writer import STALL_CLOCK, RetrySoon, StatusWriter

log = logging.getLogger(__name__)

STALL_POLL_SECONDS = float(os.environ.get("GAUDI3_STALL_POLL_SECONDS", "5"))
# Without a trusted namespace label (`--prometheus-namespace-label ""`), the launcher's own.
LAUNCHER_NAMESPACE_LABEL = "gtj_namespace"
# The step of every job, by the Prometheus namespace label and the launcher's job label.
STEP_BY_JOB = "max by ({label}, gtj) (gaudi3_train_step)"
DEFAULT_STATUS_INTERVAL_SECONDS = 600.0
WRITES_IN_FLIGHT = 8


@dataclass
class StallSettings:
    # The label Prometheus' service discovery puts the pod's namespace in ("" = none).
    namespace_label: str = DEFAULT_NAMESPACE_LABEL
    # status.progress at most this often besides transitions (0: transitions only).
    status_interval: float = DEFAULT_STATUS_INTERVAL_SECONDS
    poll: float = STALL_POLL_SECONDS

    @property
    def query_label(self) -> str:
        return self.namespace_label or LAUNCHER_NAMESPACE_LABEL


@dataclass(frozen=True)
class Watched:
    """A running job the sweep reads, parsed once from the index's body."""

    key: Key
    uid: str
    timeout: int
    url: str
    ready_since: datetime | None
    status_step: float | None  # what status.progress says now
    body: Mapping[str, Any] = field(compare=False, repr=False)  # as the index had it


@dataclass
class StallClock:
    probes: PrometheusProbes = field(default_factory=lambda: PROBES)
    clocks: ProgressClocks = field(default_factory=lambda: CLOCKS)
    settings: StallSettings = field(default_factory=StallSettings)
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    # (uid, generation) -> (stall timeout, Prometheus URL): the spec parsed once per change.
    _specs: dict[Key, tuple[str, int, int, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        metrics.track_cache("stall_specs", lambda: len(self._specs))

    async def sweep(
        self,
        jobs: Mapping[Key, Any],
        clients: kube.Clients,
        enqueue: Callable[[Key], None],
    ) -> None:
        """One look at every job: read, remember, write what status should say, wake."""
        started = time.monotonic()
        now = self.now()
        # One job decoded at a time, and kept only when watched: every job decoded at once
        # stayed alive across the Prometheus reads below, the operator's largest single
        # allocation at the peak of a thousand-job burst (16 MiB; docs/performance.md).
        keys = list(jobs)
        watched = [
            w
            for key in keys
            if (w := self._watch(key, unpack(next(iter(jobs.get(key) or ()), None))))
        ]
        self._forget(self.clocks.retain(keys))
        present = set(keys)
        self._specs = {k: v for k, v in self._specs.items() if k in present}
        by_url: dict[str, list[Watched]] = {}
        for w in watched:
            by_url.setdefault(w.url, []).append(w)
        read = await asyncio.gather(*(self._read(url, group, now) for url, group in by_url.items()))
        fresh = [w for ok, group in zip(read, by_url.values(), strict=True) if ok for w in group]
        writes = []
        for w in fresh:
            clock = self.clocks.get(w.key, w.uid)
            if clock is None or clock.progress is None:
                continue
            p = clock.progress
            self._publish(w.key, p)
            stalled = p.stalled_for() >= w.timeout
            if should_write(
                p,
                clock.recorded,
                now,
                stalled=stalled,
                interval_seconds=self.settings.status_interval,
            ):
                writes.append((w, clock, p, stalled))
            due = stall_due(p, w.ready_since, w.timeout)
            if w.ready_since is not None and p.seen >= due and clock.due_enqueued != due:
                clock.due_enqueued = due  # one wake-up per stall; the resync looks again
                enqueue(w.key)
        await self._write_all(clients, writes, now)
        metrics.STALL_SWEEP_SECONDS.observe(time.monotonic() - started)

    # --- reading ----------------------------------------------------------------------------

    def _watch(self, key: Key, body: Mapping[str, Any] | None) -> Watched | None:
        if body is None:
            return None
        status = body.get("status") or {}
        if status.get("phase") != Phase.RUNNING.value:
            return None
        meta = body.get("metadata") or {}
        uid, generation = meta.get("uid", ""), int(meta.get("generation") or 0)
        cached = self._specs.get(key)
        if cached is None or cached[:2] != (uid, generation):
            try:
                spec = GaudiTrainingJobSpec.model_validate(body.get("spec") or {})
            except ValidationError:
                return None  # the reconciler reports InvalidSpec
            try:
                url = choose_url(
                    spec.autoscaling.prometheus_url, self.probes.url, self.probes.allowed_urls
                )
            except URLNotAllowed as err:  # the autoscaler reports it in the job's status
                log.debug("%s/%s: no stall check: %s", *key, err)
                url = ""
            cached = (uid, generation, spec.failure_policy.stall_timeout_seconds, url)
            self._specs[key] = cached
        timeout, url = cached[2], cached[3]
        if timeout <= 0 or not url:
            return None
        step = (status.get("progress") or {}).get("step")
        return Watched(
            key=key,
            uid=uid,
            timeout=timeout,
            url=url,
            ready_since=_ready_since(status),
            status_step=float(step) if isinstance(step, int | float) else None,
            body=body,
        )

    async def _read(self, url: str, group: list[Watched], now: datetime) -> bool:
        """One query for every job of this Prometheus; False when it gave no answer (then
        nothing moves: no stall is found from reads that did not happen)."""
        prom = self.probes.client(url)
        if prom is None:
            return False
        label = self.settings.query_label
        query = scope_query_to_any(STEP_BY_JOB.format(label=label), label, _namespaces(group))
        try:
            samples = await prom.query(query)
        except PromQLError as err:
            log.warning("stall clock: the step query failed: %s", err)
            return False
        steps = {(s.labels.get(label, ""), s.labels.get("gtj", "")): s.value for s in samples}
        new = [w for w in group if self.clocks.get(w.key, w.uid) is None]
        if new:
            await self._rebuild(prom, new, now)
        for w in group:
            clock = self.clocks.get(w.key, w.uid)
            if clock is not None:
                clock.progress = advance(clock.progress, steps.get(w.key), now)
        return True

    async def _rebuild(self, prom: PrometheusClient, new: list[Watched], now: datetime) -> None:
        """Clocks for jobs this process has not read yet, from the step's history: one
        range query per stall timeout among them."""
        label = self.settings.query_label
        by_timeout: dict[int, list[Watched]] = {}
        for w in new:
            by_timeout.setdefault(w.timeout, []).append(w)
        for timeout, group in by_timeout.items():
            window, resolution = history_window(timeout)
            query = scope_query_to_any(STEP_BY_JOB.format(label=label), label, _namespaces(group))
            end = now.timestamp()
            history: dict[Key, Progress | None] = {}
            try:
                for series in await prom.query_range(query, end - window, end, resolution):
                    key = (series.labels.get(label, ""), series.labels.get("gtj", ""))
                    history[key] = from_history(series.points, now)
            except PromQLError as err:
                # The first read starts the clock: a stall found at most one timeout late.
                log.warning("stall clock: cannot rebuild from history: %s", err)
            for w in group:
                # What status says now is what was written: the next write is a change.
                recorded = Recorded(w.status_step, False, now)
                self.clocks.put(w.key, JobClock(w.uid, history.get(w.key), recorded))

    # --- effects --------------------------------------------------------------------------

    async def _write_all(
        self,
        clients: kube.Clients,
        writes: list[tuple[Watched, JobClock, Progress, bool]],
        now: datetime,
    ) -> None:
        slots = asyncio.Semaphore(WRITES_IN_FLIGHT)
        writer = StatusWriter(clients)

        async def write(w: Watched, clock: JobClock, p: Progress, stalled: bool) -> None:
            async with slots:
                old = w.body.get("status") or {}
                new = {**old, "progress": status_progress(p)}
                try:
                    written = await writer.write(
                        w.body, new, writer=STALL_CLOCK, fields=("progress",)
                    )
                except asyncio.CancelledError:
                    raise
                except RetrySoon as err:  # someone else wrote progress: look next sweep
                    log.debug("%s/%s: progress not recorded: %s", *w.key, err)
                    return
                except Exception as err:  # one job's trouble must not stop the clock for all
                    if kube.status_code(err) != 404:
                        log.warning("%s/%s: cannot record progress: %s", *w.key, err)
                    return
                clock.recorded = Recorded(p.step, stalled, now)
                if written is not None:  # None: status had it already, or the job is gone
                    metrics.PROGRESS_WRITES.labels(why="stalled" if stalled else "progress").inc()

        await asyncio.gather(*(write(*item) for item in writes))

    def _publish(self, key: Key, p: Progress) -> None:
        ns, name = key
        metrics.JOB_TRAINING_STEP.labels(gtj_namespace=ns, gtj=name).set(p.step)
        metrics.JOB_STEP_ADVANCED.labels(gtj_namespace=ns, gtj=name).set(p.advanced.timestamp())

    def _forget(self, keys: Iterable[Key]) -> None:
        for ns, name in keys:
            for gauge in (metrics.JOB_TRAINING_STEP, metrics.JOB_STEP_ADVANCED):
                with contextlib.suppress(KeyError):
                    gauge.remove(ns, name)


def _namespaces(group: Iterable[Watched]) -> set[str]:
    return {w.key[0] for w in group}


def _ready_since(status: Mapping[str, Any]) -> datetime | None:
    """When the world last became all-ready (the Ready condition's transition), as the pass
    reads it (`jobs.plan`): the stall clock of a new world starts there."""
    for c in status.get("conditions") or []:
        if c.get("type") == ConditionType.READY.value and c.get("status") == "True":
            return api.parse_rfc3339(c.get("lastTransitionTime"))
    return None


async def stall_loop(memo: Any, clock: StallClock | None = None) -> None:
    clock = clock or memo.get("stall_clock") or StallClock()
    while True:
        await asyncio.sleep(clock.settings.poll)
        controller, clients = memo.get("controller"), memo.get("clients")
        if controller is None or clients is None or controller.jobs is None:
            continue
        await clock.sweep(controller.jobs, clients, controller.enqueue)
