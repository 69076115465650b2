"""Failure detection that needs the world outside the job's pods: nodes, HPU health from
the Gaudi exporter, training progress (the stall clock's, `failover.stall`), and pods that
vanished.

Effects only, no decisions: everything here gathers observations for the pure
`failover.policy` module. State is per operator process and rebuilt from watches and queries
after a restart (kopf lists every node and pod again on start-up).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from gaudi_operator.api import LABEL_JOB_NAME, FailureReason
from gaudi_operator.clients.prometheus import PrometheusClient, PromQLError
from gaudi_operator.failover import policy as failover
from gaudi_operator.failover.progress import ProgressClocks
from gaudi_operator.jobs.observation import Observation, observe_pod
from gaudi_operator.observability import metrics

log = logging.getLogger(__name__)

# The HPU health query, over Intel's Gaudi Prometheus metric exporter as it ships
# (HabanaAI/gaudi-metric-exporter 1.24.0-1007: exporter.go, samples.go; docs/gaudi.md).
# Every device series carries the card (`Serial`, `id`) and the pod holding it
# (`pod_namespace`, `pod_name`, from the kubelet's pod-resources API; empty for a free
# card), never the node. The exporter writes 0 for every field it failed to read
# (rhlml/src/lib.rs: `unwrap_or(0)`), so a 0 is never taken as a fault: a threshold of 0
# is no threshold, and a port that reads 0 is down only if it was up in the last 10
# minutes and its card still answers (its on-chip temperature reads above 0). The result
# names the worker pod and the fault (`fault` label: ecc, temperature, link).
DEFAULT_HPU_HEALTH_QUERY = (
    "label_replace(max by (pod_namespace, pod_name, id, Serial) ("
    "habanalabs_pending_rows_with_double_bit_ecc_errors > 0"
    '), "fault", "ecc", "", "")'
    " or "
    "label_replace(max by (pod_namespace, pod_name, id, Serial) ("
    "habanalabs_temperature_onchip >= (habanalabs_temperature_threshold_shutdown > 0)"
    '), "fault", "temperature", "", "")'
    " or "
    "label_replace(count by (pod_namespace, pod_name, id, Serial) ("
    '(habanalabs_nic_port_status{port_type="external"} == 0)'
    ' and (max_over_time(habanalabs_nic_port_status{port_type="external"}[10m]) == 1)'
    " and ignoring (port, port_type) (habanalabs_temperature_onchip > 0)"
    '), "fault", "link", "", "")'
)
HPU_HEALTH_QUERY_ENV = "GAUDI3_HPU_HEALTH_QUERY"
HPU_HEALTH_INTERVAL_ENV = "GAUDI3_HPU_HEALTH_INTERVAL_SECONDS"
HPU_HEALTH_POD_GRACE_ENV = "GAUDI3_HPU_HEALTH_POD_GRACE_SECONDS"
DEFAULT_HPU_HEALTH_INTERVAL = 5.0
# A reading speaks for a worker once it is older than one scrape of the exporter: Intel
# recommends a 30 s scrape interval, and a scrape takes a few seconds (rhlml).
DEFAULT_HPU_HEALTH_POD_GRACE = 40.0
DELETED_NODE_TTL = 600.0


def utcnow() -> datetime:
    return datetime.now(UTC)


# --- nodes --------------------------------------------------------------------------------


class NodeCache:
    """The health of the nodes the operator has seen, parsed once from the node watch.

    `lookup` answers for the nodes worker pods run on: their health (`exists=False` for a
    node known to be gone), or no key for a node not seen yet (before the first listing).
    """

    def __init__(self) -> None:
        self._nodes: dict[str, failover.NodeHealth] = {}
        # Deleted node -> when: remembered long enough for the passes of the jobs that
        # ran there (they are woken at once), then forgotten, so it never only grows.
        self._deleted: dict[str, float] = {}
        metrics.track_cache("nodes", lambda: len(self._nodes))
        metrics.track_cache("nodes_deleted", lambda: len(self._deleted))

    def update(self, event_type: str | None, body: Mapping[str, Any]) -> bool:
        """Apply a watch event; True when the node's health changed (worth a look)."""
        name = body.get("metadata", {}).get("name")
        if not name:
            return False
        if event_type == "DELETED":
            self._nodes.pop(name, None)
            now = time.monotonic()
            self._deleted = {n: t for n, t in self._deleted.items() if now - t < DELETED_NODE_TTL}
            self._deleted[name] = now
            return True
        before = self._nodes.get(name)
        health = failover.node_health(body, name)
        if health.hpus_missing:
            # Kubernetes does not say when allocatable dropped: the first sighting counts,
            # unless the drop was there before the operator looked (a restart, a new node).
            if before is None:
                health = replace(health, hpus_missing_before_seen=True)
            elif before.hpus_missing >= health.hpus_missing:
                health = replace(
                    health,
                    hpus_missing_since=before.hpus_missing_since,
                    hpus_missing_before_seen=before.hpus_missing_before_seen,
                )
            else:  # (more) cards went bad while the operator watched
                health = replace(health, hpus_missing_since=utcnow())
        self._nodes[name] = health
        self._deleted.pop(name, None)
        return before is None or _health_key(before) != _health_key(health)

    def lookup(self, names: Iterable[str]) -> dict[str, failover.NodeHealth]:
        out: dict[str, failover.NodeHealth] = {}
        for name in names:
            if name in self._nodes:
                out[name] = self._nodes[name]
            elif name in self._deleted:
                out[name] = failover.node_health(None, name)
        return out


def _health_key(h: failover.NodeHealth) -> tuple[Any, ...]:
    return (h.ready, h.hpu_capacity, h.hpu_allocatable, h.unschedulable)


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
        metrics.track_cache("disruptions", lambda: len(self._gone))
        metrics.track_cache("own_deletions", lambda: len(self._own))

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
        if uid in self._own:
            del self._own[uid]  # its deletion is seen: nothing more to tell it apart from
            return None
        if not job:
            return None
        pod = observe_pod(body)
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
        if entries is None:
            return
        for name in list(entries) if pods is None else pods:
            entries.pop(name, None)
        if not entries:
            del self._gone[(namespace, job)]  # no empty map left behind per job

    def _expire(self) -> None:
        limit = time.monotonic() - self.TTL_SECONDS
        self._own = {u: t for u, t in self._own.items() if t >= limit}
        for key in list(self._gone):
            self._gone[key] = {n: g for n, g in self._gone[key].items() if g.seen >= limit}
            if not self._gone[key]:
                del self._gone[key]


# --- Prometheus: HPU health and training progress -----------------------------------------


HpuFaults = Mapping[tuple[str, str], tuple[failover.HpuFault, ...]]  # (namespace, pod) ->


@dataclass
class PrometheusProbes:
    """Queries shared by every job; one HPU-health query per interval for all of them."""

    url: str = ""
    hpu_health_query: str = DEFAULT_HPU_HEALTH_QUERY
    hpu_health_interval: float = DEFAULT_HPU_HEALTH_INTERVAL
    hpu_pod_grace: float = DEFAULT_HPU_HEALTH_POD_GRACE
    allowed_urls: tuple[str, ...] = ()
    _clients: dict[str, PrometheusClient] = field(default_factory=dict)
    _hpu_cache: HpuFaults = field(default_factory=dict)
    _hpu_read_at: datetime | None = None
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

    async def hpu_faults(self) -> tuple[HpuFaults, datetime | None]:
        """(namespace, pod) -> the faults of the cards it holds, and when the query ran;
        ({}, None) when Prometheus is off, and the last reading while it does not answer
        (missing data never restarts a job)."""
        prom = self.client()
        if prom is None or not self.hpu_health_query:
            return {}, None
        if self._lock.locked():
            # A query is on its way: never hold a pass up for it.
            return self._hpu_cache, self._hpu_read_at
        async with self._lock:
            if time.monotonic() - self._hpu_at < self.hpu_health_interval:
                return self._hpu_cache, self._hpu_read_at
            asked = utcnow()
            try:
                samples = await prom.query(self.hpu_health_query)
            except PromQLError as e:
                log.warning("HPU health query failed: %s", e)
                samples = None
            if samples is not None:
                self._hpu_cache = hpu_faults_from_samples(samples)
                self._hpu_read_at = asked
                metrics.set_hpu_faults(
                    Counter(f.kind.value for fs in self._hpu_cache.values() for f in fs)
                )
            self._hpu_at = time.monotonic()
            return self._hpu_cache, self._hpu_read_at


_FAULT_TEXT = {
    failover.HpuFaultKind.ECC: "{v:g} rows with double-bit ECC errors pending replacement",
    failover.HpuFaultKind.TEMPERATURE: "on-chip temperature {v:g} C reached its shutdown threshold",
    failover.HpuFaultKind.LINK_DOWN: "{v:g} scale-out port(s) down",
}


def hpu_faults_from_samples(
    samples: Iterable[Any],
) -> dict[tuple[str, str], tuple[failover.HpuFault, ...]]:
    """The health query's result by worker pod. A sample counts when it names a pod
    (`pod_namespace`, `pod_name`: a free card affects no job) and its value is neither 0
    nor NaN; its `fault` label says what (ecc, temperature, link; anything else is an HPU
    fault of a custom query)."""
    out: dict[tuple[str, str], list[failover.HpuFault]] = {}
    for s in samples:
        ns, pod = s.labels.get("pod_namespace"), s.labels.get("pod_name")
        if not ns or not pod or s.value != s.value or s.value == 0:
            continue
        label = s.labels.get("fault", "")
        try:
            kind = failover.HpuFaultKind(label)
        except ValueError:
            kind = failover.HpuFaultKind.OTHER
        card = s.labels.get("id")
        serial = s.labels.get("Serial")
        where = f"HPU {card}" if card else "an HPU"
        if serial:
            where += f" (serial {serial})"
        text = _FAULT_TEXT.get(kind, "the HPU health query reports {fault} ({v:g})")
        what = text.format(v=s.value, fault=label or "a fault")
        out.setdefault((ns, pod), []).append(
            failover.HpuFault(kind, f"the Gaudi exporter reports {where}: {what}")
        )
    return {key: tuple(faults) for key, faults in out.items()}


# --- what the reconciler asks for, and tells back ------------------------------------------

NODES = NodeCache()
DISRUPTIONS = DisruptionLog()
PROBES = PrometheusProbes()
CLOCKS = ProgressClocks()  # the stall clock's (failover/stall.py), read by every pass


async def signals_for(obs: Observation) -> failover.Signals:
    """Everything failover needs beyond the pod list, for one reconcile pass."""
    job, pods = obs.job, obs.pods
    faults, read_at = await PROBES.hpu_faults() if pods else ({}, None)
    hpu = failover.HpuReading(
        {
            p.name: faults[(job.namespace, p.name)]
            for p in pods
            if (job.namespace, p.name) in faults
        },
        read_at,
        PROBES.hpu_pod_grace,
    )
    return failover.Signals(
        nodes=NODES.lookup({p.node for p in pods if p.node}),
        hpu=hpu,
        gone=DISRUPTIONS.pending(
            job.namespace, job.name, job.uid, obs.generation, obs.replicas, (p.name for p in pods)
        ),
        own_deletions=DISRUPTIONS.own_uids(),
        progress=CLOCKS.progress(job.namespace, job.name, job.uid),
    )


metrics.track_cache("probe_prometheus_clients", lambda: len(PROBES._clients))
metrics.track_cache("progress_clocks", lambda: len(CLOCKS))
