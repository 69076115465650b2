"""`gaudi3 benchmark autoscale`: time from a metric crossing its threshold to the new
workers Running, on the local cluster.

It serves a metric with prometheus_client, registers it with the cluster's Prometheus
(file_sd), runs `gaudi3 operator` against the cluster, creates one job with the built-in
autoscaler, and then, run after run, moves the metric across the threshold and times:

- scrape: the new value is visible in Prometheus;
- decide: spec.workers.replicas changed (the operator's decision, through /scale);
- running: every new worker pod is Running (kwok plays the kubelet).

The pieces (`MetricExporter`, `OperatorRunner`) are reused by the cluster tests.
"""

from __future__ import annotations

import json
import os
import random
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from prometheus_client import CollectorRegistry, Gauge, start_http_server
from rich.console import Console
from rich.table import Table

from gaudi_devtools.benchmarks import support
from gaudi_devtools.cluster import Cluster, ClusterError
from gaudi_devtools.cluster.processes import free_port
from gaudi_devtools.crd import install_crds
from gaudi_operator import api

console = Console()
REPO = Path(__file__).resolve().parents[2]
LOAD_METRIC = "gaudi3_bench_load"


class MetricExporter:
    """Gauges a test or benchmark sets, scraped by the local cluster's Prometheus.

    It stands in for the pods of many jobs, so each series carries the `namespace` label
    that Prometheus' service discovery gives a real pod's series (this folder is scraped
    with honor_labels): the operator limits a job's queries to it."""

    def __init__(self, targets_dir: Path, name: str) -> None:
        self.registry = CollectorRegistry()
        self.load = Gauge(
            LOAD_METRIC,
            "Load that drives the autoscaler in tests and benchmarks",
            ["gtj", "gtj_namespace", "namespace"],
            registry=self.registry,
        )
        # Same name and labels as the launcher's metric (docs/architecture.md).
        self.throughput = Gauge(
            "gaudi3_train_samples_per_second",
            "Per-rank training throughput (simulated)",
            ["gtj", "gtj_namespace", "rank", "namespace"],
            registry=self.registry,
        )
        self.port = free_port()
        self._server, self._thread = start_http_server(
            self.port, addr="127.0.0.1", registry=self.registry
        )
        self.target_file = targets_dir / f"{name}.json"
        targets_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.target_file.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"targets": [f"127.0.0.1:{self.port}"]}]))
        tmp.rename(self.target_file)  # atomic: Prometheus never reads half a file

    def set_load(
        self, job: str, namespace: str, value: float, *, pod_namespace: str | None = None
    ) -> None:
        """The job's load; `pod_namespace` serves it as if from a pod of another namespace
        (one that claims the job's labels)."""
        self.load.labels(
            gtj=job, gtj_namespace=namespace, namespace=pod_namespace or namespace
        ).set(value)

    def set_throughput(self, job: str, namespace: str, per_rank: list[float]) -> None:
        """Replace the job's per-rank series (ranks that are gone disappear)."""
        for labels in list(self._ranks(job, namespace)):
            self.throughput.remove(*labels)
        for rank, v in enumerate(per_rank):
            self.throughput.labels(
                gtj=job, gtj_namespace=namespace, rank=str(rank), namespace=namespace
            ).set(v)

    def _ranks(self, job: str, namespace: str) -> Iterator[tuple[str, str, str, str]]:
        for metric in self.throughput.collect():
            for s in metric.samples:
                if s.labels.get("gtj") == job and s.labels.get("gtj_namespace") == namespace:
                    yield (job, namespace, s.labels["rank"], namespace)

    def close(self) -> None:
        self.target_file.unlink(missing_ok=True)
        self._server.shutdown()
        self._server.server_close()


class OperatorRunner:
    """`gaudi3 operator` as a child process with the autoscaler's settings."""

    def __init__(self, cluster: Cluster, interval: float, log: Path) -> None:
        self.cluster, self.interval, self.log = cluster, interval, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_port = free_port()

    def start(self) -> None:
        # Imported here: the CLI starts faster without kopf.
        from gaudi_operator.autoscaling.loop import INTERVAL_ENV, PROMETHEUS_ENV

        exe = Path(sys.executable).with_name("gaudi3")
        env = {
            **os.environ,
            "KUBECONFIG": str(self.cluster.kubeconfig),
            PROMETHEUS_ENV: self.cluster.prometheus_url,
            INTERVAL_ENV: str(self.interval),
        }
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    str(exe),
                    "operator",
                    "--metrics-port",
                    str(self.metrics_port),
                    "--health-port",
                    "0",
                    "--metrics-address",
                    "127.0.0.1",
                    "--resync-seconds",
                    "5",
                    "--no-leader-elect",
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@dataclass
class Run:
    scrape: float
    decide: float
    running: float


@dataclass
class Results:
    interval: float
    step: int
    hpus_per_worker: int
    up: list[Run] = field(default_factory=list)
    down: list[Run] = field(default_factory=list)


def _poll(check: Callable[[], bool], timeout: float, what: str, every: float = 0.1) -> float:
    """Seconds until `check()` holds (raises after `timeout`)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(every)
    raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}")


def job_manifest(name: str, step: int, hpus: int) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": name},
        "spec": {
            "image": "ghcr.io/gaudi-scale-starter/gaudi-train:bench",
            "hpusPerWorker": hpus,
            "workers": {"replicas": 1, "minReplicas": 1, "maxReplicas": 1 + step},
            "autoscaling": {
                "enabled": True,
                "metric": {
                    "query": f'sum({LOAD_METRIC}{{gtj="$job",gtj_namespace="$namespace"}})',
                    "target": 100,
                    "type": "AverageValue",
                },
                "tolerance": 0.1,
                "cooldownSeconds": 0,
                "scaleUp": {"stabilizationSeconds": 0, "maxStep": step},
                "scaleDown": {"stabilizationSeconds": 0, "maxStep": step},
                "minEfficiency": 0,
                "pendingTimeoutSeconds": 120,
            },
        },
    }


class Bench:
    def __init__(self, c: Cluster, ns: str, job: str, exporter: MetricExporter) -> None:
        self.c, self.ns, self.job, self.exporter = c, ns, job, exporter
        self.http = httpx.Client(timeout=5)
        # Straight to the API server: polling through kubectl would time kubectl.
        ctx = ssl.create_default_context(cafile=str(c.pki / "ca.crt"))
        ctx.load_cert_chain(str(c.pki / "admin.crt"), str(c.pki / "admin.key"))
        self.kube = httpx.Client(base_url=c.apiserver_url, verify=ctx, timeout=5)

    def replicas(self) -> int:
        path = f"/apis/{api.GROUP}/{api.VERSION}/namespaces/{self.ns}/{api.PLURAL}/{self.job}"
        return int(self.kube.get(path).json()["spec"]["workers"]["replicas"])

    def running_workers(self) -> tuple[int, int]:
        r = self.kube.get(
            f"/api/v1/namespaces/{self.ns}/pods",
            params={"labelSelector": api.job_selector(self.job)},
        )
        live = [p for p in r.json()["items"] if not p["metadata"].get("deletionTimestamp")]
        running = [p for p in live if p.get("status", {}).get("phase") == "Running"]
        return len(live), len(running)

    def prometheus_sees(self, value: float) -> bool:
        q = f'sum({LOAD_METRIC}{{gtj="{self.job}",gtj_namespace="{self.ns}"}})'
        try:
            r = self.http.get(f"{self.c.prometheus_url}/api/v1/query", params={"query": q})
            result = r.json()["data"]["result"]
            return bool(result) and float(result[0]["value"][1]) == value
        except (httpx.HTTPError, KeyError, ValueError, IndexError):
            return False

    def move(self, load: float, target: int, timeout: float) -> Run:
        """Set the load at t0; seconds from t0 to each milestone."""
        t0 = time.monotonic()
        self.exporter.set_load(self.job, self.ns, load)
        _poll(lambda: self.prometheus_sees(load), timeout, "Prometheus to scrape")
        scrape = time.monotonic() - t0
        _poll(lambda: self.replicas() == target, timeout, f"replicas {target}")
        decide = time.monotonic() - t0
        _poll(
            lambda: self.running_workers() == (target, target), timeout, f"{target} running workers"
        )
        return Run(scrape=scrape, decide=decide, running=time.monotonic() - t0)


def run_benchmark(
    c: Cluster, runs: int, step: int, hpus: int, interval: float, start_operator: bool, log: Path
) -> Results:
    ns, job = "gaudi3-bench-autoscale", "bench-autoscale"
    install_crds(c)
    c.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", f"crd/{api.PLURAL}.{api.GROUP}"
    )
    c.kubectl("delete", "namespace", ns, "--ignore-not-found", "--wait=true", timeout=120)
    c.kubectl("create", "namespace", ns)
    exporter = MetricExporter(c.targets_dir, "bench-autoscale")
    operator = OperatorRunner(c, interval, log)
    results = Results(interval=interval, step=step, hpus_per_worker=hpus)
    try:
        if start_operator:
            operator.start()
        exporter.set_load(job, ns, 100)
        c.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(job_manifest(job, step, hpus)))
        bench = Bench(c, ns, job, exporter)
        _poll(lambda: bench.running_workers() == (1, 1), 120, "the first worker Running")
        rng = random.Random(0)
        for i in range(runs):
            # A real metric crosses its threshold at any moment of the loop's period; without
            # this pause every move would land just after a pass (the worst case).
            time.sleep(rng.uniform(0, interval))
            up = bench.move(100.0 * (1 + step), 1 + step, timeout=120)
            results.up.append(up)
            time.sleep(rng.uniform(0, interval))
            down = bench.move(100.0, 1, timeout=120)
            results.down.append(down)
            console.print(f"run {i + 1}/{runs}: up {up.running:.2f}s, down {down.running:.2f}s")
    finally:
        operator.stop()
        exporter.close()
        c.kubectl("delete", "namespace", ns, "--ignore-not-found", "--wait=false", check=False)
    return results


def _stats(xs: list[float]) -> tuple[float, float, float]:
    s = sorted(xs)
    p90 = s[min(len(s) - 1, max(0, round(0.9 * len(s)) - 1))]
    return statistics.median(s), p90, s[-1]


def _table(r: Results) -> Table:
    t = Table(
        title=f"autoscale latency, from the metric crossing its threshold "
        f"(loop interval {r.interval:g}s, step {r.step}, "
        f"{r.hpus_per_worker} HPUs/worker, {len(r.up)} runs)"
    )
    for col in ("direction", "phase", "median s", "p90 s", "max s"):
        t.add_column(col)
    for direction, rows in (("up", r.up), ("down", r.down)):
        for phase in ("scrape", "decide", "running"):
            med, p90, mx = _stats([getattr(x, phase) for x in rows])
            label = {
                "scrape": "visible in Prometheus",
                "decide": "replicas changed",
                "running": "workers Running" if direction == "up" else "workers gone",
            }[phase]
            t.add_row(direction, label, f"{med:.2f}", f"{p90:.2f}", f"{mx:.2f}")
    return t


def benchmark_autoscale(
    name: Annotated[
        str, typer.Option("--cluster", help="Local cluster name (gaudi3 cluster up).")
    ] = "gaudi3",
    runs: Annotated[int, typer.Option(min=1, max=100, help="Scale-up/down cycles.")] = 5,
    step: Annotated[int, typer.Option(min=1, max=16, help="Workers added per scale-up.")] = 2,
    hpus_per_worker: Annotated[
        int, typer.Option(callback=support.hpus_per_worker, help="HPUs per worker: 1, 2, 4 or 8.")
    ] = 8,
    interval: Annotated[
        float, typer.Option(min=0.2, help="Autoscaler loop period of the operator it starts.")
    ] = 10.0,
    start_operator: Annotated[
        bool,
        typer.Option(
            "--start-operator/--no-start-operator",
            help="Start `gaudi3 operator` (off: one already runs with these settings).",
        ),
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Time from a metric crossing its threshold to the new workers Running."""
    c = Cluster(name)
    if not c.healthy():
        console.print(
            f"[red]error:[/] cluster {name!r} is not up: run "
            f"`gaudi3 cluster up --name {name}` first"
        )
        raise typer.Exit(1)
    log = Path(tempfile.gettempdir()) / f"gaudi3-bench-autoscale-{os.getpid()}.log"
    try:
        r = run_benchmark(c, runs, step, hpus_per_worker, interval, start_operator, log)
    except ClusterError as e:
        console.print(f"[red]error:[/] {e}\noperator log: {log}")
        raise typer.Exit(1) from e
    if as_json:
        print(
            json.dumps(
                {
                    "interval": r.interval,
                    "step": r.step,
                    "hpusPerWorker": r.hpus_per_worker,
                    "up": [vars(x) for x in r.up],
                    "down": [vars(x) for x in r.down],
                },
                indent=2,
            )
        )
    else:
        console.print(_table(r))
