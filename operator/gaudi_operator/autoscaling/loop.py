"""The built-in autoscaler loop: reads Prometheus and the cluster, asks `autoscaling.decide`,
resizes through the /scale subresource and records the decision.

One asyncio task for the whole operator walks the jobs with `spec.autoscaling.enabled`
(a kopf index keeps the list) and runs one pass per job every `interval` seconds.
Why not a kopf daemon or timer per job: kopf would put a finalizer on every job, and
deleting a job would hang while the operator is down (runtime/controller.py has the same rule).

A pass:

1. reads the job (fresh GET: the decision must see the latest replicas);
2. refuses to act when an external autoscaler also drives the job (condition
   AutoscalingConflict + a Warning event): an autoscaling/v2 HPA whose scaleTargetRef
   names the job (KEDA's ScaledObject creates exactly such an HPA), or the annotation
   `gaudi.scalestarter.dev/external-autoscaler` on the job (for anything else that
   writes /scale);
3. queries the metric, limited to the job's namespace (`clients.promql.scope_query`;
   a query that cannot be limited is refused: MetricsUnavailable, reason QueryNotScoped),
   and reads the job's throughput from one query for every autoscaled job (skipped while
   backing off after failures; the condition MetricsUnavailable says why);
4. looks at the job's pods (is a scale-up's new worker still unscheduled?) and, only
   when a scale-up is coming, at the nodes (capacity.py);
5. applies the decision: a resize replaces the Scale with the resourceVersion it read, so
   it never overwrites a concurrent `kubectl scale`; then writes status.autoscaling,
   status.lastScale and conditions through the one status writer
   (`runtime.status_writer`, as `AUTOSCALER`), posts events once that write landed, and
   counts metrics.

The loop's state (recommendations, the metric's value, the backoff) is kept in memory and
reaches `status.autoscaling` only when the decision changes (`policy.worth_writing`): a job
whose decision holds costs no API write. A process without that memory (a restart, a new
leader) resumes from status (`policy.resume`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from gaudi_operator import api
from gaudi_operator.api import (
    AutoscalingStatus,
    Condition,
    ConditionType,
    GaudiTrainingJobSpec,
    LastScale,
    PendingResize,
    Phase,
    get_condition,
    set_condition,
)
from gaudi_operator.autoscaling import capacity
from gaudi_operator.autoscaling.policy import (
    NOTABLE_HOLDS,
    THROUGHPUT_BY_JOB,
    Decision,
    Observation,
    Reason,
    decide,
    resume,
    worth_writing,
)
from gaudi_operator.autoscaling.usage import HpuUsage
from gaudi_operator.clients import kube
from gaudi_operator.clients.prometheus import (
    BadQuery,
    EmptyResult,
    PrometheusClient,
    PrometheusUnreachable,
    PromQLError,
    URLNotAllowed,
    choose_url,
    render_query,
)
from gaudi_operator.clients.promql import (
    DEFAULT_NAMESPACE_LABEL,
    QueryNotScoped,
    scope_query,
    scope_query_to_any,
)
from gaudi_operator.jobs import manifests
from gaudi_operator.jobs.gaudi import GaudiSettings
from gaudi_operator.jobs.observation import observe_pod
from gaudi_operator.observability import metrics
from gaudi_operator.observability.events import post_event
from gaudi_operator.runtime import failpoints
from gaudi_operator.runtime.status_writer import AUTOSCALER, RetrySoon, StatusWriter
from gaudi_operator.runtime.supervision import supervise

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, job name)

DEFAULT_INTERVAL_SECONDS = 10.0
INTERVAL_ENV = "GAUDI3_AUTOSCALE_INTERVAL_SECONDS"
PROMETHEUS_ENV = "GAUDI3_PROMETHEUS_URL"
# Without a trusted namespace label (`--prometheus-namespace-label ""`), the launcher's own.
LAUNCHER_NAMESPACE_LABEL = "gtj_namespace"
# MetricsUnavailable reasons: why the metric could not be read.
QUERY_FAILED = "QueryFailed"
QUERY_NOT_SCOPED = "QueryNotScoped"
NO_PROMETHEUS = "NoPrometheus"


@dataclass
class AutoscalerSettings:
    prometheus_url: str = ""  # operator-wide default
    # Other Prometheus URLs a job's spec.autoscaling.prometheusURL may name.
    allowed_urls: tuple[str, ...] = ()
    interval: float = DEFAULT_INTERVAL_SECONDS
    query_timeout: float = 5.0
    # Passes (and so users' queries, each with `query_timeout`) running at once, all jobs
    # together: a slow Prometheus costs a sweep of N jobs N / concurrency timeouts.
    concurrency: int = 32
    # The label Prometheus' service discovery puts a pod's namespace in; "" = no scoping.
    namespace_label: str = DEFAULT_NAMESPACE_LABEL

    @classmethod
    def from_env(
        cls,
        prometheus_url: str = "",
        allowed_urls: tuple[str, ...] = (),
        namespace_label: str = DEFAULT_NAMESPACE_LABEL,
    ) -> AutoscalerSettings:
        return cls(
            prometheus_url=prometheus_url or os.environ.get(PROMETHEUS_ENV, ""),
            allowed_urls=allowed_urls,
            interval=float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL_SECONDS)),
            namespace_label=namespace_label,
        )


@dataclass(frozen=True)
class Entry:
    """What the index keeps per job: enough to decide whether a pass is needed."""

    enabled: bool
    # One of our conditions is True: a disabled job still needs a pass to clear it.
    flagged: bool


OUR_CONDITIONS = api.AUTOSCALER_CONDITIONS
_NOT_FORMED = (Phase.PENDING, Phase.STARTING, Phase.RESTARTING)
# The node list for the capacity check is shared by all jobs for this long (the HPUs the
# pods hold come from a watch, usage.py).
ROOM_CACHE_SECONDS = 3.0


@dataclass
class _Throughputs:
    """One answer to the throughput query for every autoscaled job of one Prometheus."""

    at: float = -1e9  # time.monotonic() of the answer
    namespaces: frozenset[str] = frozenset()
    values: dict[Key, float] | None = None  # None: the query failed
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Autoscaler:
    def __init__(
        self,
        clients: kube.Clients,
        settings: AutoscalerSettings,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        gaudi: GaudiSettings | None = None,
    ) -> None:
        self.clients = clients
        self.settings = settings
        # Capacity checks place the worker pod the reconciler would create.
        self.gaudi = gaudi or GaudiSettings()
        self.status = StatusWriter(clients)
        self._clock = clock
        self._prom: dict[str, PrometheusClient] = {}
        self._due: dict[Key, float] = {}
        self._running: set[Key] = set()
        # (uid, state) the last pass left: what it decided from, and what status lags.
        self._memory: dict[Key, tuple[str, AutoscalingStatus]] = {}
        self._throughputs: dict[str, _Throughputs] = {}
        metrics.track_cache("autoscale_due", lambda: len(self._due))
        metrics.track_cache("autoscale_memory", lambda: len(self._memory))
        metrics.track_cache("autoscale_running", lambda: len(self._running))
        metrics.track_cache("autoscale_prometheus_clients", lambda: len(self._prom))
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._task: asyncio.Task[None] | None = None
        self._passes: set[asyncio.Task[Any]] = set()
        self.jobs: Mapping[Key, Any] | None = None  # the kopf index, bound by an event
        self._node_cache: tuple[float, list[dict[str, Any]]] | None = None
        # HPUs held per node, from a watch started by the first scale-up (usage.py).
        self.usage = HpuUsage(clients, lambda: {key[0] for key in self.jobs or {}})

    # --- life ---------------------------------------------------------------------------

    def bind(self, jobs: Mapping[Key, Any]) -> None:
        self.jobs = jobs

    def start(self) -> None:
        self._task = supervise("autoscaler", self._loop)

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._passes) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self.usage.stop()
        for prom in self._prom.values():
            await prom.aclose()
        await self.clients.close()

    async def _loop(self) -> None:
        while True:
            now = time.monotonic()
            entries = self._entries()
            present = {key for key, _ in entries}
            for gone in self._due.keys() - present:
                del self._due[gone]  # deleted jobs: bounded by the jobs that exist
            for gone in self._memory.keys() - present:
                del self._memory[gone]
            for key, entry in entries:
                if not (entry.enabled or entry.flagged):
                    self._due.pop(key, None)
                    self._memory.pop(key, None)
                    continue
                if key in self._running or self._due.get(key, 0) > now:
                    continue
                self._due[key] = now + self.settings.interval
                self._running.add(key)
                task = asyncio.create_task(self._guarded_pass(key))
                self._passes.add(task)
                task.add_done_callback(self._passes.discard)
            await asyncio.sleep(min(1.0, self.settings.interval / 2))

    def _entries(self) -> list[tuple[Key, Entry]]:
        out = []
        for key, store in list((self.jobs or {}).items()):
            entry = next(iter(store), None)
            if isinstance(entry, Entry):
                out.append((key, entry))
        return out

    async def _guarded_pass(self, key: Key) -> None:
        try:
            async with self._slots:
                await self.run_pass(*key)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("autoscaler pass for %s/%s failed", *key)
        finally:
            self._running.discard(key)
            if self.jobs is not None and not (self.jobs.get(key) or ()):
                # Deleted while the pass ran: the controller already dropped its series.
                metrics.AUTOSCALE_DESIRED_REPLICAS.remove(*key)

    # --- one pass -----------------------------------------------------------------------

    async def run_pass(self, namespace: str, name: str) -> Decision | None:
        """One decision for one job; returns it (None when nothing was decided)."""
        body = await self._get_job(namespace, name)
        if body is None:
            return None
        meta, status = body.get("metadata") or {}, body.get("status") or {}
        conditions = _conditions(status)
        try:
            spec = GaudiTrainingJobSpec.model_validate(body.get("spec") or {})
        except ValidationError:
            return None  # the reconciler reports InvalidSpec
        phase = status.get("phase")
        if (
            not spec.autoscaling.enabled
            or spec.suspend
            or meta.get("deletionTimestamp")
            or phase in (Phase.SUCCEEDED, Phase.FAILED, Phase.SUSPENDED)
        ):
            await self._clear_conditions(body, conditions)
            return None
        now = self._clock()
        try:
            written = AutoscalingStatus.model_validate(status.get("autoscaling") or {})
        except ValidationError:
            written = AutoscalingStatus()  # unreadable state: start over rather than crash
        state = self._resume((namespace, name), meta.get("uid", ""), written, spec, now)
        if state.pending_resize is not None:
            await self._finish_resize(body, spec, state)
            return None
        if phase in _NOT_FORMED and state.verifying is None:
            # A world that is still forming (or restarting after a failure) is not resized;
            # a scale-up under check still gets its pending/efficiency verdict.
            return None

        external = await self._external_autoscaler(namespace, name, meta)
        if external:
            await self._refuse(body, conditions, external, now)
            return None

        obs, why = await self._observe(body, spec, state, now)
        decision = decide(spec, state, obs, self.settings.interval)
        if decision.direction == "up" and not decision.rollback:
            # Only a scale-up needs the nodes: list them now, and decide again with the room.
            room = await self._schedulable_workers(body, spec)
            if room is not None:
                obs = _replace(obs, schedulable_workers=room[0])
                decision = decide(spec, state, obs, self.settings.interval)
                if decision.reason == Reason.INSUFFICIENT_CAPACITY:
                    decision = _with_message(decision, f"{decision.message}: {room[1]}")
        await self._apply(body, spec, written, decision, obs, why, conditions, now)
        return decision

    def _resume(
        self,
        key: Key,
        uid: str,
        written: AutoscalingStatus,
        spec: GaudiTrainingJobSpec,
        now: datetime,
    ) -> AutoscalingStatus:
        """The state to decide from: this process's own while status still records the same
        decision (nobody else changed it, and the last write landed), else status's."""
        mine = self._memory.get(key)
        if mine is not None and mine[0] == uid and not worth_writing(written, mine[1]):
            return mine[1].model_copy(deep=True)
        return resume(written, now)

    async def _get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.clients.get(
                kube.custom_path(api.GROUP, api.VERSION, namespace, api.PLURAL, name)
            )
        except Exception as err:
            if kube.status_code(err) == 404:
                self._due.pop((namespace, name), None)
                return None
            raise

    # --- observation --------------------------------------------------------------------

    async def _observe(
        self,
        body: Mapping[str, Any],
        spec: GaudiTrainingJobSpec,
        state: AutoscalingStatus,
        now: datetime,
    ) -> tuple[Observation, str | None]:
        """What the pass sees, and why the metric is missing (a MetricsUnavailable reason;
        None when it was read, or not asked while backing off)."""
        meta = body.get("metadata") or {}
        ns, name = meta.get("namespace", ""), meta.get("name", "")
        replicas = spec.workers.replicas
        value: float | None = None
        throughput: float | None = None
        error, queried = "", True
        why: str | None = None
        next_query = api.parse_rfc3339(state.next_query_time)
        try:
            url = choose_url(
                spec.autoscaling.prometheus_url,
                self.settings.prometheus_url,
                self.settings.allowed_urls,
            )
        except URLNotAllowed as err:
            url, error, why = "", str(err), NO_PROMETHEUS
            metrics.AUTOSCALE_QUERY_ERRORS.labels(kind="url_not_allowed").inc()
        if error:
            queried = False
        elif next_query is not None and now < next_query:
            queried = False
            error = (
                f"{state.last_error or 'query failed'} ({state.query_failures} failures in a "
                f"row; next query at {state.next_query_time})"
            )
        elif not url:
            error = (
                "no Prometheus to ask: set spec.autoscaling.prometheusURL, or start the "
                "operator with --prometheus-url (GAUDI3_PROMETHEUS_URL)"
            )
            why = NO_PROMETHEUS
            metrics.AUTOSCALE_QUERY_ERRORS.labels(kind="no_url").inc()
        else:
            prom = self._client(url)
            try:
                query = self._scoped(render_query(spec.autoscaling.metric.query, name, ns), ns)
                value = await prom.value(query)
            except QueryNotScoped as err:
                error, why = str(err), QUERY_NOT_SCOPED
                metrics.AUTOSCALE_QUERY_ERRORS.labels(kind="not_scoped").inc()
            except PromQLError as err:
                error, why = f"spec.autoscaling.metric.query: {err}", QUERY_FAILED
                metrics.AUTOSCALE_QUERY_ERRORS.labels(kind=_error_kind(err)).inc()
            if value is not None:
                throughput = await self._throughput(url, prom, (ns, name))
        new_running = new_pending = 0
        if state.verifying is not None:
            new_running, new_pending = await self._new_workers(
                ns, name, meta.get("uid", ""), state.verifying.from_, state.verifying.to
            )
        obs = Observation(
            now=now,
            replicas=replicas,
            value=value,
            metric_error=error,
            metric_queried=queried,
            throughput=throughput,
            new_running=new_running,
            new_pending=new_pending,
        )
        return obs, why

    def _scoped(self, query: str, namespace: str) -> str:
        label = self.settings.namespace_label
        return scope_query(query, label, namespace) if label else query

    async def _throughput(self, url: str, prom: PrometheusClient, key: Key) -> float | None:
        """The job's samples/s from one query for every autoscaled job (asked again once
        per loop interval, or when a job of a namespace it did not cover asks); None when
        unknown."""
        shared = self._throughputs.setdefault(url, _Throughputs())
        async with shared.lock:  # the passes of one sweep share one answer
            fresh = time.monotonic() - shared.at < self.settings.interval * 0.9
            if not (fresh and key[0] in shared.namespaces):
                wanted = frozenset(k[0] for k, e in self._entries() if e.enabled) | {key[0]}
                label = self.settings.namespace_label or LAUNCHER_NAMESPACE_LABEL
                query = scope_query_to_any(THROUGHPUT_BY_JOB.format(label=label), label, wanted)
                try:
                    samples = await prom.query(query)
                    shared.values = {
                        (s.labels.get(label, ""), s.labels.get("gtj", "")): s.value
                        for s in samples
                        if not math.isnan(s.value)
                    }
                except PromQLError as err:
                    log.debug("throughput query failed: %s", err)
                    shared.values = None
                shared.at, shared.namespaces = time.monotonic(), wanted
            return (shared.values or {}).get(key)

    def _client(self, url: str) -> PrometheusClient:
        prom = self._prom.get(url)
        if prom is None:
            prom = self._prom[url] = PrometheusClient(url, timeout=self.settings.query_timeout)
        return prom

    async def _job_pods(self, namespace: str, name: str, uid: str) -> list[dict[str, Any]]:
        """The job's workers: its label, and controlled by this incarnation (uid) of it."""
        listed = await self.clients.get(
            kube.core_path(namespace, "pods"), {"labelSelector": api.job_selector(name)}
        )
        pods = list(listed.get("items") or [])
        return [p for p in pods if observe_pod(p).owner_uid in ("", uid)]

    async def _new_workers(
        self, namespace: str, name: str, uid: str, lo: int, hi: int
    ) -> tuple[int, int]:
        """(Running, unschedulable-or-missing) among workers lo..hi-1 of the newest generation.

        A pod that has a node but is not Running yet (pulling a large Gaudi image) is
        neither: it is progressing, and must not trigger the pending rollback."""
        live = [
            p
            for p in await self._job_pods(namespace, name, uid)
            if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
            and not (p.get("metadata") or {}).get("deletionTimestamp")
        ]
        gen = max((_label_int(p, api.LABEL_GENERATION) for p in live), default=0)
        by_index = {
            _label_int(p, api.LABEL_WORKER_INDEX): p
            for p in live
            if _label_int(p, api.LABEL_GENERATION) == gen
        }
        running = waiting = 0
        for i in range(lo, hi):
            p = by_index.get(i)
            if p is None or not (p.get("spec") or {}).get("nodeName"):
                waiting += 1
            elif (p.get("status") or {}).get("phase") == "Running":
                running += 1
        return running, waiting

    async def _schedulable_workers(
        self, body: Mapping[str, Any], spec: GaudiTrainingJobSpec
    ) -> tuple[int, str] | None:
        meta, status = body.get("metadata") or {}, body.get("status") or {}
        ns, name = meta.get("namespace", ""), meta.get("name", "")
        excluded = list(status.get("excludedNodes") or [])
        try:
            ref = manifests.JobRef(name, ns, meta.get("uid", ""))
            pod_spec = manifests.worker_pod_manifest(
                spec, ref, spec.workers.replicas, 0, excluded_nodes=excluded, settings=self.gaudi
            )["spec"]
            node_objs = await self._nodes()
            used = await self.usage.used_by_node()
            own = await self._job_pods(ns, name, meta.get("uid", ""))
        except Exception as err:
            log.warning("%s/%s: cannot read the cluster's capacity: %s", ns, name, err)
            return None  # unknown: the pending-timeout rollback still guards
        # The job's own workers still waiting for a node take the room first.
        own_waiting = sum(
            1
            for p in own
            if not (p.get("spec") or {}).get("nodeName")
            and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
        )
        rooms = capacity.cluster_room(node_objs, used, pod_spec, excluded)
        fits = capacity.schedulable_workers(rooms, spec.hpus_per_worker, own_waiting)
        return fits, capacity.summary(rooms, spec.hpus_per_worker)

    async def _nodes(self) -> list[dict[str, Any]]:
        """The nodes (as JSON, not models), shared by all jobs' checks for a few seconds."""
        cached = self._node_cache
        if cached is not None and time.monotonic() - cached[0] < ROOM_CACHE_SECONDS:
            return cached[1]
        nodes = list((await self.clients.get("/api/v1/nodes")).get("items") or [])
        self._node_cache = (time.monotonic(), nodes)
        return nodes

    async def _external_autoscaler(self, namespace: str, name: str, meta: Mapping[str, Any]) -> str:
        """Who else drives this job's /scale, or "" for nobody."""
        declared = (meta.get("annotations") or {}).get(api.ANNOTATION_EXTERNAL_AUTOSCALER) or ""
        if declared.strip():
            return f"annotation {api.ANNOTATION_EXTERNAL_AUTOSCALER}={declared.strip()}"
        try:
            hpas = await self.clients.get(
                f"/apis/autoscaling/v2/namespaces/{namespace}/horizontalpodautoscalers"
            )
        except Exception as err:
            log.warning("%s/%s: cannot list HPAs: %s", namespace, name, err)
            return ""
        for hpa in hpas.get("items") or []:
            ref = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
            group = (ref.get("apiVersion") or "").split("/")[0]
            if ref.get("kind") == api.KIND and ref.get("name") == name and group == api.GROUP:
                return f"HorizontalPodAutoscaler {(hpa.get('metadata') or {}).get('name')}"
        return ""

    # --- effects ------------------------------------------------------------------------

    async def _refuse(
        self, body: Mapping[str, Any], conditions: list[Condition], who: str, now: datetime
    ) -> None:
        old = get_condition(conditions, ConditionType.AUTOSCALING_CONFLICT)
        msg = (
            f"spec.autoscaling.enabled is true but {who} also drives this job's /scale; "
            f"the built-in autoscaler stands down. Keep one: set spec.autoscaling.enabled "
            f"to false, or remove the external autoscaler"
        )
        metrics.AUTOSCALE_DECISIONS.labels(direction="none", reason="ExternalAutoscaler").inc()
        if old is not None and old.status == "True" and old.message == msg:
            return
        new = set_condition(
            conditions, ConditionType.AUTOSCALING_CONFLICT, True, "ExternalAutoscaler", msg, now
        )
        if await self._write_status(body, {}, new):
            await post_event(self.clients, body, "Warning", "AutoscalingConflict", msg)

    async def _clear_conditions(self, body: Mapping[str, Any], conditions: list[Condition]) -> None:
        now = self._clock()
        new = conditions
        for t in OUR_CONDITIONS:
            c = get_condition(new, t)
            if c is not None and c.status == "True":
                new = set_condition(new, t, False, "AutoscalingOff", "", now)
        if new is not conditions:
            await self._write_status(body, {}, new)

    async def _apply(
        self,
        body: Mapping[str, Any],
        spec: GaudiTrainingJobSpec,
        written: AutoscalingStatus,
        decision: Decision,
        obs: Observation,
        why: str | None,
        conditions: list[Condition],
        now: datetime,
    ) -> None:
        meta = body.get("metadata") or {}
        ns, name = meta.get("namespace", ""), meta.get("name", "")
        key, uid = (ns, name), meta.get("uid", "")
        patch: dict[str, Any] = {}
        if decision.resize:
            # Commit before act: the resize (lastScale, cooldown, and the pending intent)
            # is recorded first, guarded by the version this pass decided from; a crash
            # before /scale is finished by the next pass (`_finish_resize`), never lost.
            last = LastScale(
                from_=decision.current,
                to=decision.replicas,
                reason=decision.reason.value,
                value=decision.value,
                time=api.to_rfc3339(now),
            ).to_dict()
            intent = decision.state.model_copy(
                update={
                    "pending_resize": PendingResize(
                        from_=decision.current, to=decision.replicas, time=api.to_rfc3339(now)
                    )
                }
            )
            before = (body.get("status") or {}).get("lastScale")
            committed = await self._commit(
                body, {"lastScale": last, "autoscaling": intent.to_dict()}
            )
            if committed is None:
                return  # the job changed since this pass read it: decide again next pass
            body = committed
            failpoints.hit("after-scale-intent")
            if await self._scale(ns, name, decision.current, decision.replicas):
                patch["lastScale"] = last
            else:  # someone resized meanwhile: no resize of ours to record
                patch["lastScale"] = before

        conds = _conflict_cleared(conditions, now)
        unavailable = get_condition(conds, ConditionType.METRICS_UNAVAILABLE)
        if obs.value is None and why:
            # Said once per cause: a message that changes every pass (timings, backoff)
            # would cost a write every pass.
            if unavailable is None or unavailable.status != "True" or unavailable.reason != why:
                conds = set_condition(
                    conds,
                    ConditionType.METRICS_UNAVAILABLE,
                    True,
                    why,
                    f"holding {decision.current} workers: {obs.metric_error}",
                    now,
                )
        elif obs.value is not None and unavailable is not None and unavailable.status == "True":
            conds = set_condition(
                conds,
                ConditionType.METRICS_UNAVAILABLE,
                False,
                "MetricsAvailable",
                f"metric reads {obs.value:g}",
                now,
            )
        changed = conds != conditions
        if patch or changed or worth_writing(written, decision.state):
            # Explicit nulls: a merge patch must remove what the new state dropped.
            patch["autoscaling"] = decision.state.model_dump(by_alias=True, mode="json")
            # A resize was decided by its intent's write (committed above) and made: its
            # event goes out even when this write lost to the job's changes (the next pass
            # decides Cooldown and drops the intent left in status: `_finish_resize`).
            wrote = await self._write_status(body, patch, conds if changed else None)
            if not wrote and not decision.resize:
                return  # the job changed under this pass: decide again, post nothing yet
            log.info("%s/%s: %s: %s", ns, name, decision.reason.value, decision.message)
        else:
            log.debug("%s/%s: %s: %s", ns, name, decision.reason.value, decision.message)
        self._memory[key] = (uid, decision.state)

        metrics.AUTOSCALE_DECISIONS.labels(
            direction=decision.direction, reason=decision.reason.value
        ).inc()
        metrics.AUTOSCALE_DESIRED_REPLICAS.labels(namespace=ns, job=name).set(
            decision.replicas if decision.desired is None else decision.desired
        )
        await self._post_events(body, written, decision, obs, why, unavailable)

    async def _post_events(
        self,
        body: Mapping[str, Any],
        old: AutoscalingStatus,
        decision: Decision,
        obs: Observation,
        why: str | None,
        unavailable_before: Condition | None,
    ) -> None:
        if decision.confirmed:
            await post_event(
                self.clients, body, "Normal", Reason.SCALE_UP_CONFIRMED.value, decision.confirmed
            )
        if decision.resize:
            kind = "Warning" if decision.rollback else "Normal"
            await post_event(self.clients, body, kind, decision.reason.value, decision.message)
            return
        before = old.last_decision.reason if old.last_decision else None
        if decision.reason == Reason.METRICS_UNAVAILABLE:
            was = unavailable_before
            if why and (was is None or was.status != "True" or was.reason != why):
                # One Warning per cause; a refused query names its reason.
                reason = why if why == QUERY_NOT_SCOPED else "MetricsUnavailable"
                await post_event(self.clients, body, "Warning", reason, decision.message)
            return
        if unavailable_before is not None and unavailable_before.status == "True":
            await post_event(
                self.clients, body, "Normal", "MetricsRecovered", f"metric reads {obs.value:g}"
            )
        if decision.reason in NOTABLE_HOLDS and decision.reason.value != before:
            kind = (
                "Normal"
                if decision.reason in (Reason.MANUAL_SCALE, Reason.SCALE_UP_CONFIRMED)
                else "Warning"
            )
            await post_event(self.clients, body, kind, decision.reason.value, decision.message)

    async def _commit(
        self, body: Mapping[str, Any], intent: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Write `intent` into status if the job is still the version `body` is; the new
        object, or None when it changed meanwhile (or is gone)."""
        new = {**(body.get("status") or {}), **intent}
        try:
            return await self.status.commit(body, new, fields=tuple(intent))
        except RetrySoon:
            return None

    async def _finish_resize(
        self, body: Mapping[str, Any], spec: GaudiTrainingJobSpec, state: AutoscalingStatus
    ) -> None:
        """A resize recorded by a pass that did not live to apply it: apply it if the job
        still has the size it was decided from, else drop it (someone resized since)."""
        pending = state.pending_resize
        assert pending is not None
        meta = body.get("metadata") or {}
        ns, name = meta.get("namespace", ""), meta.get("name", "")
        if spec.workers.replicas == pending.from_:
            if not await self._scale(ns, name, pending.from_, pending.to):
                return  # the job changed meanwhile: look again next pass
            log.info(
                "%s/%s: finished the recorded resize %d -> %d", ns, name, pending.from_, pending.to
            )
        done = state.model_copy(update={"pending_resize": None})
        await self._write_status(body, {"autoscaling": done.to_dict()}, None)

    async def _scale(self, namespace: str, name: str, current: int, replicas: int) -> bool:
        """Set spec.workers.replicas through /scale, as `kubectl scale` does, but only if it
        still is `current` (resourceVersion precondition): never undo a concurrent resize."""
        path = kube.custom_path(api.GROUP, api.VERSION, namespace, api.PLURAL, name, "scale")
        try:
            scale = await self.clients.get(path)
            if int((scale.get("spec") or {}).get("replicas") or 0) != current:
                return False
            scale["spec"]["replicas"] = replicas
            scale.pop("status", None)
            # PUT with the Scale's resourceVersion: a 409 if the job changed since.
            await self.clients.request("PUT", path, body=scale, answer=False)
            return True
        except Exception as err:
            if kube.status_code(err) in (404, 409):
                return False
            raise

    async def _write_status(
        self,
        body: Mapping[str, Any],
        patch: dict[str, Any],
        conditions: list[Condition] | None,
    ) -> bool:
        """Write our status fields (`patch`, each replaced whole) and, when given, our
        condition types through the one status writer; the reconciler's conditions are
        left as the job has them. False when the job changed under this pass (decide
        again next pass: nothing was written)."""
        old = body.get("status") or {}
        new = {**old, **patch}
        fields = list(patch)
        if conditions is not None:
            # Only our types change; the others stay exactly as read (a re-serialised copy
            # could differ and be taken for a change of the reconciler's).
            ours = {c.type: c.to_dict() for c in conditions if c.type in OUR_CONDITIONS}
            raw = list(old.get("conditions") or [])
            merged = [ours.pop(c.get("type"), c) if c.get("type") in ours else c for c in raw]
            new["conditions"] = [*merged, *ours.values()]
            fields.append("conditions")
        try:
            await self.status.write(body, new, writer=AUTOSCALER, fields=fields)
        except RetrySoon as err:
            meta = body.get("metadata") or {}
            log.info(
                "%s/%s: %s; next pass decides again", meta.get("namespace"), meta.get("name"), err
            )
            return False
        return True


# --- helpers ------------------------------------------------------------------------------


def _conditions(status: Mapping[str, Any]) -> list[Condition]:
    out = []
    for raw in status.get("conditions") or []:
        with contextlib.suppress(ValidationError):
            out.append(Condition.model_validate(raw))
    return out


def _conflict_cleared(conditions: list[Condition], now: datetime) -> list[Condition]:
    c = get_condition(conditions, ConditionType.AUTOSCALING_CONFLICT)
    if c is None or c.status != "True":
        return conditions
    return set_condition(
        conditions,
        ConditionType.AUTOSCALING_CONFLICT,
        False,
        "NoExternalAutoscaler",
        "only the built-in autoscaler drives this job",
        now,
    )


def _label_int(pod: Mapping[str, Any], key: str) -> int:
    try:
        return int(((pod.get("metadata") or {}).get("labels") or {}).get(key, -1))
    except ValueError:
        return -1


def _error_kind(err: PromQLError) -> str:
    if isinstance(err, PrometheusUnreachable):
        return "unreachable"
    if isinstance(err, BadQuery):
        return "bad_query"
    if isinstance(err, EmptyResult):
        return "empty"
    return "other"


def _replace(obs: Observation, **changes: Any) -> Observation:
    from dataclasses import replace

    return replace(obs, **changes)


def _with_message(decision: Decision, message: str) -> Decision:
    from dataclasses import replace

    if decision.state.last_decision is not None:
        decision.state.last_decision.message = message
    return replace(decision, message=message)
