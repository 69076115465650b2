"""Failure detection that needs the world outside the job's pods: nodes, HPU health from
the Gaudi exporter, training progress from Prometheus, and pods that vanished.

Effects only, no decisions: everything here gathers observations for the pure
`failover` module. State is per operator process and rebuilt from watches and queries
after a restart (kopf lists every node and pod again on start-up).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gaudi_operator import api, failover, lifecycle, metrics
from gaudi_operator.api import LABEL_JOB_NAME, FailureReason, Phase
from gaudi_operator.promql import PrometheusClient, PromQLError, render_query

log = logging.getLogger(__name__)

# The Gaudi exporter (Intel's metric-exporter DaemonSet) publishes per-card gauges. A card
# is unhealthy when it has rows pending replacement for uncorrectable (double-bit) ECC
# errors, or when its on-chip temperature reached the shutdown threshold. Both sides of
# the comparison come from the same card, so they share labels and match one-to-one.
# The exporter's series carry the node in a label set by the scrape config (`node` with
# the usual kubernetes_sd relabelling); HPU_HEALTH_NODE_LABEL names it.
DEFAULT_HPU_HEALTH_QUERY = (
    "max by (node) ("
    "(habanalabs_pending_rows_with_double_bit_ecc_errors > 0)"
    " or "
    "(habanalabs_temperature_onchip >= habanalabs_temperature_threshold_shutdown)"
    ")"
)
DEFAULT_HPU_HEALTH_NODE_LABEL = "node"
STEP_QUERY = 'max(gaudi3_train_step{gtj="$job",gtj_namespace="$namespace"})'


def utcnow() -> datetime:
    return datetime.now(UTC)


# --- nodes --------------------------------------------------------------------------------


class NodeCache:
    """The nodes the operator has seen, filled by the node watch.

    `lookup` answers for the nodes worker pods run on: the Node body, None for a node that
    is known to be gone, or no key for a node not seen yet (before the first listing).
    """

    def __init__(self) -> None:
        self._nodes: dict[str, dict[str, Any]] = {}
        self._deleted: set[str] = set()

    def update(self, event_type: str | None, body: Mapping[str, Any]) -> bool:
        """Apply a watch event; True when the node's health changed (worth a look)."""
        name = body.get("metadata", {}).get("name")
        if not name:
            return False
        if event_type == "DELETED":
            self._nodes.pop(name, None)
            self._deleted.add(name)
            return True
        before = self._nodes.get(name)
        slim = {
            "metadata": {
                "name": name,
                "labels": dict(body.get("metadata", {}).get("labels") or {}),
            },
            "spec": {"unschedulable": (body.get("spec") or {}).get("unschedulable", False)},
            "status": {
                "conditions": list((body.get("status") or {}).get("conditions") or []),
                "capacity": dict((body.get("status") or {}).get("capacity") or {}),
                "allocatable": dict((body.get("status") or {}).get("allocatable") or {}),
            },
        }
        h = failover.node_health(slim, name)
        if h.hpus_missing:
            seen = (before or {}).get("status", {}).get(failover.HPU_DROP_SEEN)
            slim["status"][failover.HPU_DROP_SEEN] = seen or api.to_rfc3339(utcnow())
        self._nodes[name] = slim
        self._deleted.discard(name)
        return before is None or _health_key(before) != _health_key(slim)

    def lookup(self, names: Iterable[str]) -> dict[str, dict[str, Any] | None]:
        out: dict[str, dict[str, Any] | None] = {}
        for name in names:
            if name in self._nodes:
                out[name] = self._nodes[name]
            elif name in self._deleted:
                out[name] = None
        return out

    def all(self) -> list[dict[str, Any]]:
        return list(self._nodes.values())


def _health_key(node: Mapping[str, Any]) -> tuple[Any, ...]:
    h = failover.node_health(node, node["metadata"]["name"])
    return (h.ready, h.hpu_capacity, h.hpu_allocatable, node["spec"].get("unschedulable"))


# --- pods that vanished -------------------------------------------------------------------


@dataclass
class _Gone:
    failure: failover.Failure
    generation: int | None
    seen: float
    owner_uid: str  # the job incarnation the pod belonged to


class DisruptionLog:
    """Worker pods deleted by someone else (eviction, preemption, `kubectl delete`).

    A pod taken away through the Eviction API can be gone before the next reconcile pass
    lists pods; its last state, with the DisruptionTarget condition, arrives in the watch's
    DELETED event. The operator's own deletions are remembered by uid and skipped.
    """

    TTL_SECONDS = 600

    def __init__(self) -> None:
        self._gone: dict[tuple[str, str], dict[str, _Gone]] = {}
        self._own: dict[str, float] = {}

    def deleting(self, uids: Iterable[str]) -> None:
        """The operator is about to delete these pods: not a disruption."""
        now = time.monotonic()
        for uid in uids:
            if uid:
                self._own[uid] = now

    def pod_deleted(self, body: Mapping[str, Any]) -> failover.Failure | None:
        meta = body.get("metadata") or {}
        uid = meta.get("uid", "")
        job = (meta.get("labels") or {}).get(LABEL_JOB_NAME)
        self._expire()
        if not job or uid in self._own:
            return None
        pod = lifecycle.observe_pod(body)
        if pod.terminal:
            return None  # finished pods are the reconciler's business, not a disruption
        found = failover.classify_pod(pod, utcnow()) or failover.Failure(
            FailureReason.EVICTED,
            utcnow(),
            pod.name,
            pod.node,
            pod.index,
            None,
            "the worker pod was deleted by another client",
        )
        key = (meta.get("namespace", ""), job)
        owner = next(
            (r.get("uid", "") for r in meta.get("ownerReferences") or [] if r.get("controller")), ""
        )
        self._gone.setdefault(key, {})[pod.name] = _Gone(
            found, pod.generation, time.monotonic(), owner
        )
        return found

    def own_uids(self) -> frozenset[str]:
        return frozenset(self._own)

    def pending(
        self,
        namespace: str,
        job: str,
        job_uid: str,
        generation: int,
        replicas: int,
        present: Iterable[str],
    ) -> list[failover.Failure]:
        """Disruptions of the current generation's workers that are still missing.

        Pods of an earlier job with the same name (deleted and re-created, its pods
        garbage-collected) are never this job's failures: the owner uid tells them apart.
        """
        here = set(present)
        out = []
        for name, gone in (self._gone.get((namespace, job)) or {}).items():
            idx = gone.failure.worker_index
            if gone.owner_uid != job_uid or gone.generation != generation:
                continue
            if idx is None or idx >= replicas:
                continue
            if name in here:
                continue  # already replaced
            out.append(gone.failure)
        return out

    def handled(self, namespace: str, job: str, pods: Iterable[str] | None = None) -> None:
        entries = self._gone.get((namespace, job))
        if not entries:
            return
        if pods is None:
            entries.clear()
        else:
            for name in pods:
                entries.pop(name, None)

    def _expire(self) -> None:
        limit = time.monotonic() - self.TTL_SECONDS
        self._own = {u: t for u, t in self._own.items() if t >= limit}
        for key in list(self._gone):
            self._gone[key] = {n: g for n, g in self._gone[key].items() if g.seen >= limit}
            if not self._gone[key]:
                del self._gone[key]


# --- Prometheus: HPU health and training progress -----------------------------------------


@dataclass
class PrometheusProbes:
    """Queries shared by every job; one HPU-health query per interval for all of them."""

    url: str = ""
    hpu_health_query: str = DEFAULT_HPU_HEALTH_QUERY
    hpu_health_node_label: str = DEFAULT_HPU_HEALTH_NODE_LABEL
    hpu_health_interval: float = 5.0
    _clients: dict[str, PrometheusClient] = field(default_factory=dict)
    _hpu_cache: dict[str, str] = field(default_factory=dict)
    _hpu_at: float = 0.0
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def client(self, url: str = "") -> PrometheusClient | None:
        url = url or self.url
        if not url:
            return None
        if url not in self._clients:
            self._clients[url] = PrometheusClient(url)
        return self._clients[url]

    async def aclose(self) -> None:
        for c in self._clients.values():
            await c.aclose()
        self._clients.clear()

    async def unhealthy_hpu_nodes(self) -> dict[str, str]:
        """node → why, from the health query; {} when Prometheus is off or unreachable
        (missing data never restarts a job)."""
        prom = self.client()
        if prom is None or not self.hpu_health_query:
            return {}
        if self._lock.locked():
            return self._hpu_cache  # a query is on its way: never hold a pass up for it
        async with self._lock:
            if time.monotonic() - self._hpu_at < self.hpu_health_interval:
                return self._hpu_cache
            try:
                samples = await prom.query(self.hpu_health_query)
            except PromQLError as e:
                log.warning("HPU health query failed: %s", e)
                samples = None
            if samples is not None:
                self._hpu_cache = hpu_unhealthy_from_samples(samples, self.hpu_health_node_label)
            self._hpu_at = time.monotonic()
            return self._hpu_cache

    async def training_step(self, job: str, namespace: str, url: str = "") -> float | None:
        prom = self.client(url)
        if prom is None:
            return None
        try:
            samples = await prom.query(render_query(STEP_QUERY, job, namespace))
        except PromQLError as e:
            log.debug("step query for %s/%s failed: %s", namespace, job, e)
            return None
        values = [s.value for s in samples if s.value == s.value]  # drop NaN
        return max(values) if values else None


def hpu_unhealthy_from_samples(samples: Iterable[Any], node_label: str) -> dict[str, str]:
    """Every sample of the health query with a non-zero value marks its node unhealthy."""
    out: dict[str, str] = {}
    for s in samples:
        node = s.labels.get(node_label)
        if node and s.value == s.value and s.value != 0:
            out[node] = (
                f"the Gaudi exporter reports an HPU fault on {node} (health query: {s.value:g})"
            )
    return out


def advance_progress(
    prev_step: float | None, prev_time: datetime | None, step: float | None, now: datetime
) -> tuple[float | None, datetime | None]:
    """(step, when it last advanced). A missing reading keeps the previous state; a new
    or larger step moves the clock; a lower one (resumed from an older checkpoint) too."""
    if step is None:
        return prev_step, prev_time
    if prev_step is None or step != prev_step or prev_time is None:
        return step, now
    return prev_step, prev_time


# --- what the reconciler asks for, and tells back ------------------------------------------

NODES = NodeCache()
DISRUPTIONS = DisruptionLog()
PROBES = PrometheusProbes()


def _replicas_and_generation(job: lifecycle.JobView) -> tuple[int, int]:
    try:
        replicas = int((job.spec.get("workers") or {}).get("replicas") or 1)
    except (TypeError, ValueError):
        replicas = 1
    try:
        generation = int(job.status.get("restartGeneration") or 0)
    except (TypeError, ValueError):
        generation = 0
    return replicas, generation


async def signals_for(
    job: lifecycle.JobView, observed: list[lifecycle.WorkerPod]
) -> failover.Signals:
    """Everything failover needs beyond the pod list, for one reconcile pass."""
    replicas, generation = _replicas_and_generation(job)
    unhealthy = await PROBES.unhealthy_hpu_nodes() if observed else {}
    return failover.Signals(
        nodes=NODES.lookup({p.node for p in observed if p.node}),
        unhealthy_hpu_nodes=unhealthy,
        gone=DISRUPTIONS.pending(
            job.namespace, job.name, job.uid, generation, replicas, (p.name for p in observed)
        ),
        own_deletions=DISRUPTIONS.own_uids(),
    )


@dataclass
class _Recovery:
    since: datetime  # the pass that first saw the failure
    restarted: bool = False
    created: bool = False


class FailoverRecorder:
    """Metrics of each failover: failures, restarts, and the latency from detection to
    the replacement being created and to the whole world running again."""

    def __init__(self) -> None:
        self._open: dict[tuple[str, str], _Recovery] = {}

    def after_pass(
        self,
        job: lifecycle.JobView,
        plan: lifecycle.Plan,
        events: Iterable[lifecycle.Event],
        now: datetime,
    ) -> None:
        key = (job.namespace, job.name)
        fo = plan.failover
        decision = fo.decision if fo is not None else None
        if fo is not None and decision is not None:
            for f in fo.new_failures:
                metrics.FAILURES.labels(reason=f.reason.value).inc()
            if fo.new_failures and key not in self._open:
                self._open[key] = _Recovery(since=now)
            if decision.verdict == failover.Verdict.RESTART:
                metrics.RESTARTS.labels(
                    strategy=decision.strategy.value if decision.strategy else "",
                    counted=str(decision.counted).lower(),
                ).inc()
                metrics.JOB_RESTARTS.labels(gtj_namespace=job.namespace, gtj=job.name).inc()
                self._open.setdefault(key, _Recovery(since=now)).restarted = True
                handled = None if decision.new_generation else decision.pods_to_delete
                DISRUPTIONS.handled(job.namespace, job.name, handled)
            elif decision.verdict == failover.Verdict.FAIL:
                self._open.pop(key, None)
                DISRUPTIONS.handled(job.namespace, job.name)
        rec = self._open.get(key)
        if rec is None or not rec.restarted:
            return
        if not rec.created and any(e.reason == "CreatedWorkers" for e in events):
            rec.created = True
            metrics.FAILOVER_LATENCY.labels(stage="created").observe(
                max(0.0, (now - rec.since).total_seconds())
            )
        if plan.status.phase == Phase.RUNNING:
            metrics.FAILOVER_LATENCY.labels(stage="running").observe(
                max(0.0, (now - rec.since).total_seconds())
            )
            del self._open[key]

    def forget(self, key: tuple[str, str]) -> None:
        self._open.pop(key, None)


RECORDER = FailoverRecorder()
