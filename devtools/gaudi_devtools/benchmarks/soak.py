"""`gaudi3 benchmark soak`: the operator's memory over thousands of job create/delete cycles.

With `gaudi3 operator` running as a child process (the autoscaler on the cluster's
Prometheus, failover on), each round creates a batch of jobs: plain ones, autoscaled ones
(their query asks for 2 workers, so the autoscaler resizes them) and ones whose worker
then fails once (kwok's failure stage; failover restarts them). It waits until every job
runs (the failed ones in their second generation), deletes them all, waits until every
job and worker is gone and the operator's per-job caches are empty, and samples the
operator's resident memory (VmRSS). Memory is bounded when RSS stops growing: the verdict
is the least-squares slope over the second half of the rounds (the first half warms up
the allocator, connection pools and kopf's own state).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from gaudi_devtools.benchmarks.support import free_port
from gaudi_operator import api

console = Console()
FAIL_STAGE = "pod-container-running-failed.stage.kwok.x-k8s.io"
# Keyed by node or by Prometheus URL: bounded by those, not by jobs.
NOT_PER_JOB = {"nodes", "nodes_deleted", "autoscale_prometheus_clients", "probe_prometheus_clients"}
PER_JOB_FAMILIES = (
    "gaudi_operator_job_phase",
    "gaudi_operator_job_workers",
    "gaudi_operator_job_condition",
    "gaudi_operator_job_restarts",
    "gaudi_operator_autoscale_desired_replicas",
    "gaudi_operator_job_training_step",
    "gaudi_operator_job_step_advanced_timestamp_seconds",
)


# --- what a round creates -----------------------------------------------------------------


def plan_round(rng: random.Random, jobs: int, autoscaled: float, failing: float) -> list[str]:
    """The kind of each job of a round: plain, autoscaled or failing (seeded)."""
    n_auto, n_fail = round(jobs * autoscaled), round(jobs * failing)
    kinds = ["autoscaled"] * n_auto + ["failing"] * n_fail
    kinds += ["plain"] * (jobs - len(kinds))
    rng.shuffle(kinds)
    return kinds


def job_manifest(name: str, kind: str) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "image": "gaudi-train:soak",
        "hpusPerWorker": 1,
        "workers": {"replicas": 1},
        # Small requests: the soak measures the operator, not node capacity.
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
        "failurePolicy": {"backoffSeconds": 0, "maxRestarts": 3},
    }
    if kind == "autoscaled":
        spec["workers"] = {"replicas": 1, "minReplicas": 1, "maxReplicas": 2}
        spec["autoscaling"] = {
            "enabled": True,
            # A real query to the cluster's Prometheus; its answer asks for 2 workers.
            "metric": {"query": "vector(200)", "target": 100, "type": "AverageValue"},
            "cooldownSeconds": 0,
            "scaleUp": {"stabilizationSeconds": 0},
            "minEfficiency": 0,
        }
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": name, "labels": {"gaudi3.bench/soak-kind": kind}},
        "spec": spec,
    }


# --- the operator -------------------------------------------------------------------------


@dataclass
class Operator:
    """A running operator process as the soak reads it: alive, RSS, /metrics."""

    proc: subprocess.Popen[bytes]
    metrics_port: int
    log: Path
    snapshots: Path | None = None

    async def snapshot(self) -> Path | None:
        """A tracemalloc snapshot of the traced operator (None when not traced)."""
        if self.snapshots is None:
            return None
        before = set(self.snapshots.glob("*.snap"))
        self.proc.send_signal(signal.SIGUSR2)
        for _ in range(600):
            new = set(self.snapshots.glob("*.snap")) - before
            if new:
                return new.pop()
            self.check_alive()
            await asyncio.sleep(0.1)
        raise TimeoutError("no tracemalloc snapshot within 60 s")

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the operator exited; see {self.log}")

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    async def scrape(self) -> Scrape:
        async with httpx.AsyncClient() as http:
            r = await http.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10)
        return Scrape.parse(r.text)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# --tracemalloc: the operator under tracemalloc, dumping a snapshot on SIGUSR2 (debug only:
# tracing costs memory and time, so its RSS figures are not the operator's).
TRACED_MAIN = """
import os, runpy, signal, sys, tracemalloc
import gaudi_operator.app  # untraced: imports under tracing are slow, and no leak
tracemalloc.start(8)
out, n = os.environ["GAUDI3_SOAK_SNAPSHOTS"], [0]
def dump(*_):
    n[0] += 1
    path = os.path.join(out, f"{n[0]:03d}.snap")
    with open(path + ".size", "w") as f:
        f.write(str(tracemalloc.get_traced_memory()[0]))
    tracemalloc.take_snapshot().dump(path + ".tmp")
    os.rename(path + ".tmp", path)
signal.signal(signal.SIGUSR2, dump)
sys.argv = ["gaudi3", *sys.argv[1:]]
runpy.run_module("gaudi_operator.cli.main", run_name="__main__", alter_sys=True)
"""


def launch(
    kubeconfig: Path,
    prometheus_url: str,
    log: Path,
    interval: float,
    snapshots: Path | None = None,
) -> Operator:
    """The operator of the same source tree as this module (so a checkout measures its own
    code) as a child process, once its /healthz answers; with `snapshots`, traced."""
    import gaudi_operator

    metrics_port, health_port = free_port(), free_port()
    tree = str(Path(gaudi_operator.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (tree, os.environ.get("PYTHONPATH", "")) if p)
    env = {
        **os.environ,
        "PYTHONPATH": path,
        "KUBECONFIG": str(kubeconfig),
        "GAUDI3_AUTOSCALE_INTERVAL_SECONDS": str(interval),
    }
    cmd = [sys.executable, "-m", "gaudi_operator.cli.main", "operator"]
    if snapshots is not None:
        env["GAUDI3_SOAK_SNAPSHOTS"] = str(snapshots)
        cmd = [sys.executable, "-c", TRACED_MAIN, "operator"]
    cmd += ["--metrics-port", str(metrics_port), "--health-port", str(health_port)]
    cmd += ["--metrics-address", "127.0.0.1", "--health-address", "127.0.0.1"]
    cmd += ["--no-leader-elect", "--prometheus-url", prometheus_url]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    op = Operator(proc, metrics_port, log, snapshots)
    deadline = time.monotonic() + (60 if snapshots is None else 300)  # tracing is slow
    while time.monotonic() < deadline:
        op.check_alive()
        try:
            if httpx.get(f"http://127.0.0.1:{health_port}/healthz", timeout=1).is_success:
                return op
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    op.stop()
    raise RuntimeError(f"the operator did not become healthy; see {log}")


@dataclass
class Scrape:
    caches: dict[str, int] = field(default_factory=dict)
    job_series: int = 0  # jobs that still have a gaudi_operator_job_* (or autoscale) series
    series: list[str] = field(default_factory=list)  # those series, for the report

    @classmethod
    def parse(cls, text: str) -> Scrape:
        out = cls()
        jobs: set[tuple[str, str]] = set()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if family.name == "gaudi_operator_cache_entries":
                    out.caches[s.labels["cache"]] = int(s.value)
                elif family.name in PER_JOB_FAMILIES:
                    ns = s.labels.get("gtj_namespace", s.labels.get("namespace", ""))
                    jobs.add((ns, s.labels.get("gtj", s.labels.get("job", ""))))
                    out.series.append(f"{s.name}{s.labels}")
        out.job_series = len(jobs)
        return out

    def per_job(self) -> dict[str, int]:
        return {k: v for k, v in self.caches.items() if k not in NOT_PER_JOB}

    def empty(self) -> bool:
        return not any(self.per_job().values()) and self.job_series == 0


# --- one soak -----------------------------------------------------------------------------


@dataclass
class Sample:
    round: int
    cycles: int
    rss_mib: float
    seconds: float
    scrape: Scrape
    snapshot: Path | None = None  # with --tracemalloc

    @property
    def traced_mib(self) -> float | None:
        """Memory held by Python objects (tracemalloc), without the allocator's slack."""
        if self.snapshot is None:
            return None
        return int(Path(f"{self.snapshot}.size").read_text()) / 2**20


def slope_per_1000(points: Iterable[tuple[float, float]]) -> float:
    """Least-squares slope of (cycles, MiB), in MiB per 1,000 cycles."""
    pts = list(points)
    if len(pts) < 2:
        return 0.0
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    sxy = sum((x - mx) * (y - my) for x, y in pts)
    return 1000 * sxy / sxx if sxx else 0.0


class Soak:
    def __init__(self, kubeconfig: str, ns: str, op: Operator, timeout: float) -> None:
        self.kubeconfig, self.ns, self.op, self.timeout = kubeconfig, ns, op, timeout
        self.peak: dict[str, int] = {}  # per-job cache sizes seen while jobs existed

    async def __aenter__(self) -> Soak:
        from gaudi_devtools import kube_async as kube

        self.clients = await kube.connect(self.kubeconfig)
        self.core, self.custom = self.clients.core, self.clients.custom
        await self.core.create_namespace({"metadata": {"name": self.ns}})
        await self._until("the namespace's ServiceAccount", self._has_account)
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.core.delete_namespace(self.ns)
        finally:
            await self.clients.close()

    async def _has_account(self) -> bool:
        try:
            await self.core.read_namespaced_service_account("default", self.ns)
            return True
        except Exception:
            return False

    async def _until(self, what: str, check: Callable[[], Any], every: float = 0.5) -> None:
        deadline = time.monotonic() + self.timeout
        while not await check():
            self.op.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {self.timeout:.0f}s waiting for {what}")
            await asyncio.sleep(every)

    async def _jobs(self) -> list[dict[str, Any]]:
        got = await self.custom.list_namespaced_custom_object(
            api.GROUP, api.VERSION, self.ns, api.PLURAL
        )
        return list(got["items"])

    async def _pods(self) -> list[Any]:
        sel = api.LABEL_JOB_NAME
        return list((await self.core.list_namespaced_pod(self.ns, label_selector=sel)).items)

    async def round(self, prefix: str, kinds: list[str]) -> None:
        limit = asyncio.Semaphore(16)

        async def create(i: int, kind: str) -> None:
            async with limit:
                await self.custom.create_namespaced_custom_object(
                    api.GROUP, api.VERSION, self.ns, api.PLURAL, job_manifest(f"{prefix}-{i}", kind)
                )

        await asyncio.gather(*(create(i, k) for i, k in enumerate(kinds)))
        failing = {f"{prefix}-{i}" for i, k in enumerate(kinds) if k == "failing"}
        autoscaled = {f"{prefix}-{i}" for i, k in enumerate(kinds) if k == "autoscaled"}

        def running(j: dict[str, Any]) -> bool:
            return (j.get("status") or {}).get("phase") == "Running"

        async def all_running() -> bool:
            return sum(map(running, await self._jobs())) == len(kinds)

        await self._until(f"{len(kinds)} jobs Running", all_running)

        # Fail one worker of each failing job (kwok ends its container with exit code 1).
        fail_meta = {
            "labels": {FAIL_STAGE: "true"},
            "annotations": {f"{FAIL_STAGE}/exit-code": "1", f"{FAIL_STAGE}/delay": "0"},
        }
        victims = [
            p
            for p in await self._pods()
            if p.metadata.labels.get(api.LABEL_JOB_NAME) in failing
            and not p.metadata.deletion_timestamp
        ]
        await asyncio.gather(
            *(
                self.core.patch_namespaced_pod(p.metadata.name, self.ns, {"metadata": fail_meta})
                for p in victims
            )
        )

        async def settled() -> bool:
            jobs = await self._jobs()
            restarted = sum(
                1
                for j in jobs
                if j["metadata"]["name"] in failing
                and int((j.get("status") or {}).get("restarts") or 0) >= 1
                and running(j)
            )
            resized = sum(
                1
                for j in jobs
                if j["metadata"]["name"] in autoscaled
                and j["spec"]["workers"]["replicas"] == 2
                and running(j)
            )
            for k, v in (await self.op.scrape()).per_job().items():
                self.peak[k] = max(v, self.peak.get(k, 0))
            return restarted == len(failing) and resized == len(autoscaled)

        await self._until("failed jobs restarted and autoscaled jobs resized", settled)

        await self.custom.delete_collection_namespaced_custom_object(
            api.GROUP, api.VERSION, self.ns, api.PLURAL
        )

        async def gone() -> bool:
            return not await self._jobs() and not await self._pods()

        await self._until("every job and worker gone", gone)

    async def quiet(self, wait: float) -> Scrape:
        """The operator's scrape once its per-job caches are empty (or after `wait`)."""
        deadline = time.monotonic() + wait
        while True:
            scrape = await self.op.scrape()
            if scrape.empty() or time.monotonic() > deadline:
                return scrape
            await asyncio.sleep(0.5)


async def soak(
    op: Operator,
    kubeconfig: str,
    rounds: int,
    jobs: int,
    autoscaled: float,
    failing: float,
    seed: int,
    step_timeout: float,
    on_sample: Callable[[Sample], None] = lambda s: None,
    namespace: str = "",
) -> tuple[list[Sample], dict[str, int]]:
    """The samples of every round, and the largest size of each per-job cache seen while
    the round's jobs existed (evidence that the soak filled them). The seed decides which
    jobs are autoscaled or fail; the namespace is new each run (an earlier one may still
    be terminating)."""
    rng = random.Random(seed)
    ns = namespace or f"soak-{uuid.uuid4().hex[:6]}"
    samples: list[Sample] = []
    async with Soak(kubeconfig, ns, op, step_timeout) as s:
        first = await s.quiet(0)
        samples.append(Sample(0, 0, op.rss_mib(), 0.0, first, await op.snapshot()))
        on_sample(samples[-1])
        for r in range(1, rounds + 1):
            t0 = time.monotonic()
            await s.round(f"r{r}", plan_round(rng, jobs, autoscaled, failing))
            scrape = await s.quiet(120)  # in-flight passes of deleted jobs end (slow Prometheus)
            seconds = time.monotonic() - t0
            snap = await op.snapshot()
            samples.append(Sample(r, r * jobs, op.rss_mib(), seconds, scrape, snap))
            on_sample(samples[-1])
        return samples, s.peak


def benchmark_soak(
    cluster: Annotated[str, typer.Option(help="Local cluster name (gaudi3 cluster up).")] = (
        "gaudi3"
    ),
    rounds: Annotated[int, typer.Option(min=2, help="Create/delete rounds.")] = 20,
    jobs: Annotated[int, typer.Option(min=1, max=2000, help="Jobs created per round.")] = 100,
    autoscaled: Annotated[
        float, typer.Option(min=0, max=1, help="Share of jobs with the autoscaler on.")
    ] = 0.3,
    failing: Annotated[
        float, typer.Option(min=0, max=1, help="Share of jobs whose worker fails once.")
    ] = 0.2,
    seed: Annotated[int, typer.Option(help="Seeds which jobs autoscale or fail.")] = 1,
    interval: Annotated[float, typer.Option(help="The autoscaler's loop period, seconds.")] = 2.0,
    tolerance: Annotated[
        float,
        typer.Option(
            help="Flat: |RSS slope| at most this, MiB per 1,000 cycles (RSS moves by about "
            "1.5 MiB from round to round; a leak of 2 KiB per job, less than one job's body, "
            "would exceed 2)."
        ),
    ] = 2.0,
    timeout: Annotated[float, typer.Option(help="Give up on one step after this.")] = 600,
    tracemalloc: Annotated[
        bool,
        typer.Option(
            "--tracemalloc",
            help="Debug: trace the operator's allocations and show what grew over the second "
            "half (its RSS then includes tracemalloc's own).",
        ),
    ] = False,
) -> None:
    """Rounds of job create/delete cycles; operator RSS per round, slope, cache sizes."""
    from gaudi_devtools.cluster import Cluster
    from gaudi_devtools.crd import install_crds

    if autoscaled + failing > 1:
        raise typer.BadParameter("--autoscaled plus --failing must be at most 1")
    c = Cluster(cluster)
    if not c.healthy():
        console.print(f"cluster {cluster!r} is not up: run `gaudi3 cluster up --name {cluster}`")
        raise typer.Exit(1)
    need = jobs * 2  # autoscaled jobs grow to 2 workers; a restart briefly doubles a job
    have = (c.settings.gaudi_nodes * c.settings.hpus_per_node) if c.settings else 0
    if need > have:
        console.print(
            f"[red]error:[/] up to {need} HPUs needed but the cluster has {have}: "
            f"`gaudi3 cluster up --name {cluster} --gaudi-nodes {-(-need // 8)}`"
        )
        raise typer.Exit(1)
    install_crds(c)
    # A SIGTERM (timeout, CI) unwinds through `finally`: the operator child stops too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    log = c.dir / "logs" / "bench-soak-operator.log"
    snapshots = None
    if tracemalloc:
        snapshots = c.dir / "soak-snapshots" / time.strftime("%Y%m%dT%H%M%S")
        snapshots.mkdir(parents=True)
    op = launch(Path(c.kubeconfig), c.prometheus_url, log, interval, snapshots)

    def show(s: Sample) -> None:
        left = {k: v for k, v in s.scrape.per_job().items() if v}
        console.print(
            f"round {s.round:3}  cycles {s.cycles:6}  RSS {s.rss_mib:7.1f} MiB  "
            f"{s.seconds:6.1f} s  left: {left or 0} entries, {s.scrape.job_series} jobs' series",
            soft_wrap=True,
        )

    try:
        samples, peak = asyncio.run(
            soak(op, str(c.kubeconfig), rounds, jobs, autoscaled, failing, seed, timeout, show)
        )
    finally:
        op.stop()
    if tracemalloc:
        grown(samples)
    report(samples, peak, jobs, autoscaled, failing, seed, tolerance)


def grown(samples: list[Sample], top: int = 15) -> None:
    """What the traced operator allocated more of, from mid-soak to the end."""
    import tracemalloc

    mid, last = samples[len(samples) // 2], samples[-1]
    assert mid.snapshot is not None and last.snapshot is not None
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
    before = tracemalloc.Snapshot.load(str(mid.snapshot)).filter_traces(ignore)
    after = tracemalloc.Snapshot.load(str(last.snapshot)).filter_traces(ignore)
    console.print(
        f"tracemalloc, round {mid.round} -> {last.round} (snapshots in {last.snapshot.parent}):"
    )
    for stat in after.compare_to(before, "traceback")[:top]:
        console.print(f"  {stat.size_diff / 1024:+9.1f} KiB  {stat.count_diff:+7d} blocks")
        for line in stat.traceback.format(limit=6, most_recent_first=True):
            console.print(f"      {line}", markup=False, highlight=False, soft_wrap=True)


def report(
    samples: list[Sample],
    peak: dict[str, int],
    jobs: int,
    autoscaled: float,
    failing: float,
    seed: int,
    tolerance: float,
) -> None:
    table = Table(
        title=f"{samples[-1].cycles} create/delete cycles ({jobs} jobs a round: "
        f"{autoscaled:.0%} autoscaled, {failing:.0%} failing once; seed {seed})"
    )
    traced = samples[-1].traced_mib is not None
    cols = ["round", "jobs so far", "RSS MiB", *(["traced MiB"] if traced else [])]
    for col in (*cols, "round s", "per-job entries left"):
        table.add_column(col, justify="right")
    for s in samples:
        left = sum(s.scrape.per_job().values()) + s.scrape.job_series
        row = [str(s.round), str(s.cycles), f"{s.rss_mib:.1f}"]
        row += [f"{s.traced_mib:.2f}"] if traced else []
        table.add_row(*row, f"{s.seconds:.1f}", str(left))
    console.print(table)
    half = samples[len(samples) // 2 :]
    if traced:
        t_slope = slope_per_1000((s.cycles, s.traced_mib or 0.0) for s in half)
        console.print(f"traced memory slope: {t_slope:+.3f} MiB per 1,000 cycles")
    slope = slope_per_1000((s.cycles, s.rss_mib) for s in half)
    flat = abs(slope) <= tolerance
    last = samples[-1].scrape
    low, high = min(s.rss_mib for s in half), max(s.rss_mib for s in half)
    verdict = "FLAT" if flat else ("GROWING" if slope > 0 else "SHRINKING")
    console.print(
        f"RSS over rounds {half[0].round}-{half[-1].round}: {low:.1f}-{high:.1f} MiB, slope "
        f"{slope:+.2f} MiB per 1,000 cycles (tolerance ±{tolerance:g}): [bold]{verdict}[/]"
    )
    console.print(
        "caches at the end: "
        + ", ".join(f"{k}={v}" for k, v in sorted(last.caches.items()))
        + f"; per-job metric series of {last.job_series} job(s)"
        + (f": {last.series}" if last.series else "")
    )
    console.print(
        "largest per-job caches while jobs existed: "
        + ", ".join(f"{k}={v}" for k, v in sorted(peak.items()))
    )
    if not flat or not last.empty():
        raise typer.Exit(1)
