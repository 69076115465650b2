"""Each rank's training numbers, from its metrics endpoint or from Prometheus.

The launcher's series are a contract (docs/architecture.md, "Training metrics"): every
worker process serves `gaudi3_train_*` on the pod's `prometheus.io/port` + its local rank,
labelled `gtj`, `gtj_namespace` and `rank`. This module parses them and folds them the way
the operator reads them (throughput summed over ranks, the highest step); it never calls
anything.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from gaudi_kubectl import names

STEP = "gaudi3_train_step"
LOSS = "gaudi3_train_loss"
SAMPLES_PER_SECOND = "gaudi3_train_samples_per_second"
SAMPLES_TOTAL = "gaudi3_train_samples_total"
WORLD_SIZE = "gaudi3_train_world_size"
LAST_CHECKPOINT_STEP = "gaudi3_train_last_checkpoint_step"
SERIES = (STEP, LOSS, SAMPLES_PER_SECOND, SAMPLES_TOTAL, WORLD_SIZE, LAST_CHECKPOINT_STEP)
# One PromQL selector for all of them (an instant query returns each series' last value).
SERIES_REGEX = "|".join(SERIES)


@dataclass(frozen=True)
class RankReading:
    """What one rank reports. Loss and throughput are None until the rank has stepped:
    before its first step (a fresh or resumed world) their gauges still hold 0."""

    rank: int
    pod: str | None = None
    step: int | None = None
    loss: float | None = None
    samples_per_second: float | None = None
    world_size: int | None = None
    last_checkpoint_step: int | None = None


@dataclass(frozen=True)
class Target:
    """One metrics endpoint: a worker pod's port for one local rank. `direct` is the pod's
    IP when the endpoint is read from here instead of through the API server's proxy."""

    namespace: str
    pod: str
    port: int
    path: str = "/metrics"
    direct: str | None = None


@dataclass(frozen=True)
class JobProgress:
    """A job's ranks, and the job-level numbers folded from them."""

    ranks: tuple[RankReading, ...] = ()
    # Why there are no numbers when there are none (e.g. "pods/proxy is forbidden").
    problem: str | None = None
    endpoints: int = 0  # endpoints asked (pod proxy), 0 for Prometheus
    unreachable: tuple[str, ...] = field(default=())  # endpoints that did not answer

    @property
    def world_size(self) -> int | None:
        return _top(r.world_size for r in self.ranks)

    @property
    def step(self) -> int | None:
        return _top(r.step for r in self.ranks)

    @property
    def loss(self) -> float | None:
        # The loss is the all-reduced mean, the same on every rank: their mean shows it
        # whichever ranks answered.
        got = [r.loss for r in self.ranks if r.loss is not None]
        return sum(got) / len(got) if got else None

    @property
    def samples_per_second(self) -> float | None:
        got = [r.samples_per_second for r in self.ranks if r.samples_per_second is not None]
        return sum(got) if got else None


def _top(values: Iterable[int | None]) -> int | None:
    got = [v for v in values if v is not None]
    return max(got) if got else None


def reading(rank: int, values: Mapping[str, float], pod: str | None = None) -> RankReading:
    """A rank's reading from its series' values by metric name."""

    def whole(name: str) -> int | None:
        return int(values[name]) if name in values else None

    stepped = bool(values.get(SAMPLES_TOTAL))
    return RankReading(
        rank=rank,
        pod=pod,
        step=whole(STEP),
        loss=values.get(LOSS) if stepped else None,
        samples_per_second=values.get(SAMPLES_PER_SECOND) if stepped else None,
        world_size=whole(WORLD_SIZE),
        last_checkpoint_step=whole(LAST_CHECKPOINT_STEP),
    )


def parse_exposition(text: str, pod: str | None = None) -> list[RankReading]:
    """The ranks in one /metrics text (one per endpoint, but the labels decide)."""
    by_rank: dict[int, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name not in SERIES or "rank" not in sample.labels:
                continue
            try:
                rank = int(sample.labels["rank"])
            except ValueError:
                continue
            by_rank.setdefault(rank, {})[sample.name] = float(sample.value)
    return [reading(rank, values, pod) for rank, values in sorted(by_rank.items())]


def from_prometheus(result: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], JobProgress]:
    """JobProgress by (namespace, job) from an instant query's vector result over SERIES."""
    values: dict[tuple[str, str, int], dict[str, float]] = {}
    pods: dict[tuple[str, str, int], str] = {}
    for item in result:
        labels = item.get("metric") or {}
        name, job, ns = labels.get("__name__"), labels.get("gtj"), labels.get("gtj_namespace")
        try:
            key = (str(ns), str(job), int(labels.get("rank", "")))
            value = float(item["value"][1])
        except (KeyError, IndexError, TypeError, ValueError):
            continue
        if name not in SERIES or not job or not ns:
            continue
        values.setdefault(key, {})[name] = value
        if labels.get("pod"):
            pods[key] = labels["pod"]
    out: dict[tuple[str, str], list[RankReading]] = {}
    for (ns, job, rank), got in sorted(values.items()):
        out.setdefault((ns, job), []).append(reading(rank, got, pods.get((ns, job, rank))))
    return {key: JobProgress(ranks=tuple(ranks)) for key, ranks in out.items()}


def scrape_targets(
    pods: Iterable[Mapping[str, Any]], hpus_per_worker: int = 1, *, same_machine: bool = False
) -> list[Target]:
    """The metrics endpoints of a job's live workers, as Prometheus' annotation-based
    scrape finds rank 0 of each (`prometheus.io/port`, `prometheus.io/path`), plus the
    ports of the pod's other local ranks (port + local rank, PET_NPROC_PER_NODE of them).

    The API server never proxies to a loopback pod IP (Kubernetes' IsProxyableIP refuses
    it): such a pod (host network on a node whose address is loopback, as on this project's
    local cluster) is read directly, and only when the API server is on this machine too
    (`same_machine`), so that the loopback address is the pod's and not something else here."""
    out = []
    for pod in pods:
        meta, spec, status = (
            pod.get("metadata") or {},
            pod.get("spec") or {},
            pod.get("status") or {},
        )
        notes = meta.get("annotations") or {}
        if (
            notes.get(names.ANNOTATION_PROMETHEUS_SCRAPE) != "true"
            or status.get("phase") != "Running"
            or not status.get("podIP")
            or meta.get("deletionTimestamp")
        ):
            continue
        port_note = notes.get(names.ANNOTATION_PROMETHEUS_PORT, "")
        port = int(port_note) if port_note.isdigit() else names.METRICS_PORT
        path = notes.get(names.ANNOTATION_PROMETHEUS_PATH) or "/metrics"
        local_ranks = _nproc(spec) or hpus_per_worker
        ip = str(status["podIP"])
        direct = ip if same_machine and _loopback(ip) else None
        out += [
            Target(meta.get("namespace", ""), meta["name"], port + i, path, direct)
            for i in range(max(local_ranks, 1))
        ]
    return sorted(out, key=lambda t: (t.namespace, t.pod, t.port))


def _loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


def _nproc(spec: Mapping[str, Any]) -> int | None:
    """PET_NPROC_PER_NODE of the worker container: the processes (ranks) in this pod."""
    for container in spec.get("containers") or []:
        for env in container.get("env") or []:
            if env.get("name") == "PET_NPROC_PER_NODE" and str(env.get("value", "")).isdigit():
                return int(env["value"])
    return None


def from_endpoints(texts: Mapping[Target, str | None], problem: str | None = None) -> JobProgress:
    """JobProgress from the scraped endpoints' texts (None: the endpoint did not answer)."""
    ranks: dict[int, RankReading] = {}
    for target, text in sorted(texts.items(), key=lambda kv: (kv[0].pod, kv[0].port)):
        for r in parse_exposition(text or "", target.pod):
            ranks[r.rank] = r
    missing = tuple(f"{t.pod}:{t.port}" for t, text in texts.items() if text is None)
    return JobProgress(
        ranks=tuple(ranks[k] for k in sorted(ranks)),
        problem=problem,
        endpoints=len(texts),
        unreachable=tuple(sorted(missing)),
    )
