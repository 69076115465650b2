"""`gaudi3 benchmark latency`: does a new job wait longer when many pods already run?

Issue 21 asks that a new job's latency (create -> Running) be the same with 0 and with
5,000 pods running. With `gaudi3 operator` running as a child process, this submits
`--probes` one-worker jobs one after another (each created once the last is Running, then
deleted), with no other job; then brings the cluster to each size in `--running` with
jobs of `--workers` workers (all Running), and submits the probes again. One row per size:
the probes' latency (median, slowest), and the operator's memory and CPU there.

The operator's resident memory is also read before the first job exists (the baseline).
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from gaudi_devtools import kube_async as kube
from gaudi_devtools.benchmarks.reconcile import (
    IN_FLIGHT,
    _drop_namespace,
    _namespace,
    _wait_all,
    job_manifest,
)
from gaudi_devtools.benchmarks.support import cpu_seconds, peak_rss_mib, rss_mib, start_operator
from gaudi_operator import api

console = Console()


async def _phase(custom: Any, ns: str, name: str) -> str:
    try:
        job = await custom.get_namespaced_custom_object(
            api.GROUP, api.VERSION, ns, api.PLURAL, name
        )
    except Exception as err:
        if kube.status_code(err) in (404, 429, 500, 503, 504):
            return ""
        raise
    return str((job.get("status") or {}).get("phase") or "")


async def _probe(custom: Any, ns: str, name: str, limit_s: float) -> float:
    """Create one one-worker job; seconds until its status says Running (polled at 20 Hz:
    a GET of one object, light beside what it measures)."""
    t0 = time.monotonic()
    await custom.create_namespaced_custom_object(
        api.GROUP, api.VERSION, ns, api.PLURAL, job_manifest(name, 1, 1)
    )
    while await _phase(custom, ns, name) != "Running":
        if time.monotonic() - t0 > limit_s:
            raise TimeoutError(f"probe {name} not Running after {limit_s}s")
        await asyncio.sleep(0.05)
    return time.monotonic() - t0


async def _probes(custom: Any, ns: str, tag: str, count: int, limit_s: float) -> list[float]:
    out = []
    for i in range(count):
        name = f"probe-{tag}-{i:02d}"
        out.append(await _probe(custom, ns, name, limit_s))
        # Gone before the next one, so the probes never add to what runs.
        await custom.delete_namespaced_custom_object(api.GROUP, api.VERSION, ns, api.PLURAL, name)
    return out


async def _grow(
    core: Any, custom: Any, ns: str, have: int, want: int, workers: int, limit_s: float
) -> float:
    """Jobs of `workers` workers from `have` to `want` pods, all Running; seconds taken."""
    first, last = have // workers, want // workers
    limit = asyncio.Semaphore(IN_FLIGHT)

    async def submit(i: int) -> None:
        async with limit:
            await custom.create_namespaced_custom_object(
                api.GROUP, api.VERSION, ns, api.PLURAL, job_manifest(f"bg-{i:05d}", workers, 1)
            )

    t0 = time.monotonic()
    await asyncio.gather(*(submit(i) for i in range(first, last)))

    async def running_jobs() -> int:
        listed = await custom.list_namespaced_custom_object(
            api.GROUP, api.VERSION, ns, api.PLURAL, resource_version="0"
        )
        return sum(
            1
            for j in listed["items"]
            if j["metadata"]["name"].startswith("bg-")
            and (j.get("status") or {}).get("phase") == "Running"
        )

    _, took = await _wait_all("background jobs", last, running_jobs, t0, limit_s)
    return took


async def _run(
    kubeconfig: str,
    pid: int,
    sizes: list[int],
    workers: int,
    probes: int,
    limit_s: float,
) -> list[dict[str, Any]]:
    clients = await kube.connect(kubeconfig)
    core, custom = clients.core, clients.custom
    ns = f"latency-{uuid.uuid4().hex[:6]}"
    rows: list[dict[str, Any]] = []
    try:
        await _namespace(core, ns)
        have = 0
        for size in sizes:
            grew = None
            if size > have:
                console.print(f"bringing the cluster to {size} running pods")
                grew = await _grow(core, custom, ns, have, size, workers, limit_s)
                have = size - size % workers
                await asyncio.sleep(5)  # the status writes of the last jobs settle
            lat = await _probes(custom, ns, str(have), probes, limit_s)
            rows.append(
                {
                    "running": have,
                    "grew": grew,
                    "median": statistics.median(lat),
                    "max": max(lat),
                    "all": lat,
                    "rss": rss_mib(pid),
                    "peak": peak_rss_mib(pid),
                    "cpu": cpu_seconds(pid),
                }
            )
            console.print(
                f"{have} pods running: probe latency " + ", ".join(f"{x:.2f}" for x in lat) + " s"
            )
    finally:
        try:
            await custom.delete_collection_namespaced_custom_object(
                api.GROUP, api.VERSION, ns, api.PLURAL
            )
            await _drop_namespace(core, ns, limit_s)
        finally:
            await clients.close()
    return rows


def benchmark_latency(
    cluster: Annotated[str, typer.Option(help="Local cluster name (gaudi3 cluster up).")] = (
        "gaudi3"
    ),
    running: Annotated[
        str, typer.Option(help="Pods already running at each row, comma-separated, rising.")
    ] = "0,5000",
    workers: Annotated[int, typer.Option(min=1, max=64, help="Workers per running job.")] = 8,
    probes: Annotated[int, typer.Option(min=1, max=100, help="New jobs timed per row.")] = 10,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 1800,
) -> None:
    """A new one-worker job's latency (create -> Running) with 0 and with thousands of pods
    already running; the operator's memory before the first job and at each row."""
    from gaudi_devtools.cluster import Cluster
    from gaudi_devtools.crd import install_crds

    c = Cluster(cluster)
    if not c.healthy():
        console.print(f"cluster {cluster!r} is not up: run `gaudi3 cluster up --name {cluster}`")
        raise typer.Exit(1)
    sizes = sorted({int(s) for s in running.split(",") if s.strip()})
    need = max(sizes) + 1
    have = (c.settings.gaudi_nodes * c.settings.hpus_per_node) if c.settings else 0
    if need > have:
        console.print(
            f"[red]error:[/] {need} HPUs needed but the cluster has {have}: "
            f"`gaudi3 cluster up --name {cluster} --gaudi-nodes {-(-need // 8)}`"
        )
        raise typer.Exit(1)
    install_crds(c)
    log = c.dir / "logs" / "bench-latency-operator.log"
    proc = start_operator(Path(c.kubeconfig), log)
    try:
        time.sleep(5)  # its watches listed what there is
        baseline, base_peak = rss_mib(proc.pid), peak_rss_mib(proc.pid)
        rows = asyncio.run(_run(str(c.kubeconfig), proc.pid, sizes, workers, probes, timeout))
    finally:
        proc.terminate()
        proc.wait(60)
    console.print(
        f"operator before the first job: RSS {baseline or 0:.0f} MiB (peak {base_peak or 0:.0f})"
    )
    table = Table(
        title=f"a new one-worker job, create -> Running ({probes} one after another a row); "
        "bring-up: the running pods' jobs to all Running; the operator's memory and CPU"
    )
    for col in ("pods running", "median", "slowest", "bring-up", "RSS / peak", "CPU so far"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            f"{r['running']:,}",
            f"{r['median']:.2f} s",
            f"{r['max']:.2f} s",
            f"{r['grew']:.1f} s" if r["grew"] is not None else "-",
            f"{r['rss'] or 0:.0f} / {r['peak'] or 0:.0f} MiB",
            f"{r['cpu'] or 0:.1f} s",
        )
    console.print(table)
