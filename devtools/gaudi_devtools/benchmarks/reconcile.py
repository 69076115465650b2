"""`gaudi3 benchmark reconcile`: how fast the operator turns many jobs into running workers,
and how much memory it needs for them.

It submits N jobs of M workers at once to a local cluster, with `gaudi3 operator` running
as a child process, and times until every job reports Running; then deletes them all and
times until every worker is gone. The operator's peak resident memory is read from /proc.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from gaudi_devtools.benchmarks.support import peak_rss_mib, start_operator
from gaudi_operator import api
from gaudi_operator.clients import kube

console = Console()


def job_manifest(name: str, workers: int, hpus: int) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": name},
        "spec": {
            "image": "gaudi-train:bench",
            "hpusPerWorker": hpus,
            "workers": {"replicas": workers},
            # Small requests, so the benchmark measures the operator, not node capacity.
            "resources": {"requests": {"cpu": "1", "memory": "1Gi"}},
        },
    }


async def _run(
    kubeconfig: str, ns: str, jobs: int, workers: int, hpus: int, limit_s: float
) -> dict[str, float]:
    clients = await kube.connect(kubeconfig)
    core, custom = clients.core, clients.custom
    try:
        await core.create_namespace({"metadata": {"name": ns}})
        while True:  # pods are refused until the namespace's default account exists
            try:
                await core.read_namespaced_service_account("default", ns)
                break
            except Exception:
                await asyncio.sleep(0.2)
        limit = asyncio.Semaphore(32)

        async def submit(i: int) -> None:
            async with limit:
                await custom.create_namespaced_custom_object(
                    api.GROUP,
                    api.VERSION,
                    ns,
                    api.PLURAL,
                    job_manifest(f"job-{i:05d}", workers, hpus),
                )

        t0 = time.monotonic()
        await asyncio.gather(*(submit(i) for i in range(jobs)))
        submitted = time.monotonic() - t0

        first_running = None
        with console.status(f"waiting for {jobs} jobs x {workers} workers to run") as status:
            while True:
                listed = await custom.list_namespaced_custom_object(
                    api.GROUP, api.VERSION, ns, api.PLURAL
                )
                running = sum(
                    1 for j in listed["items"] if (j.get("status") or {}).get("phase") == "Running"
                )
                if running and first_running is None:
                    first_running = time.monotonic() - t0
                status.update(f"{running}/{jobs} jobs Running")
                if running == jobs:
                    break
                if time.monotonic() - t0 > limit_s:
                    raise TimeoutError(f"only {running}/{jobs} jobs Running after {limit_s}s")
                await asyncio.sleep(0.5)
        all_running = time.monotonic() - t0

        t1 = time.monotonic()
        await custom.delete_collection_namespaced_custom_object(
            api.GROUP, api.VERSION, ns, api.PLURAL
        )
        with console.status("waiting for every worker to be garbage-collected"):
            while True:
                pods = await core.list_namespaced_pod(ns, label_selector=api.LABEL_JOB_NAME)
                if not pods.items:
                    break
                if time.monotonic() - t1 > limit_s:
                    raise TimeoutError(f"{len(pods.items)} workers left after {limit_s}s")
                await asyncio.sleep(0.5)
        cleaned = time.monotonic() - t1
        return {
            "submitted": submitted,
            "first_running": first_running or all_running,
            "all_running": all_running,
            "cleaned": cleaned,
        }
    finally:
        try:
            await core.delete_namespace(ns)
        finally:
            await clients.close()


def benchmark_reconcile(
    cluster: Annotated[str, typer.Option(help="Local cluster name (gaudi3 cluster up).")] = (
        "gaudi3"
    ),
    jobs: Annotated[int, typer.Option(min=1, max=5000, help="Jobs submitted at once.")] = 100,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Workers per job.")] = 4,
    hpus_per_worker: Annotated[int, typer.Option(min=1, max=8)] = 1,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 600,
) -> None:
    """N jobs of M workers submitted at once -> all Running; operator peak memory."""
    from gaudi_devtools.cluster import Cluster
    from gaudi_devtools.crd import install_crds

    c = Cluster(cluster)
    if not c.healthy():
        console.print(f"cluster {cluster!r} is not up: run `gaudi3 cluster up --name {cluster}`")
        raise typer.Exit(1)
    need = jobs * workers * hpus_per_worker
    have = (c.settings.gaudi_nodes * c.settings.hpus_per_node) if c.settings else 0
    if need > have:
        nodes = -(-need // 8)
        console.print(
            f"[red]error:[/] {need} HPUs needed but the cluster has {have}: "
            f"`gaudi3 cluster up --name {cluster} --gaudi-nodes {nodes}`"
        )
        raise typer.Exit(1)
    install_crds(c)
    log = c.dir / "logs" / "bench-reconcile-operator.log"
    proc = start_operator(Path(c.kubeconfig), log)
    ns = f"bench-{uuid.uuid4().hex[:6]}"
    try:
        r = asyncio.run(_run(str(c.kubeconfig), ns, jobs, workers, hpus_per_worker, timeout))
        rss = peak_rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(20)
    pods = jobs * workers
    table = Table(title=f"{jobs} jobs x {workers} workers ({pods} pods, {need} HPUs)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("jobs submitted (API, 32 at a time)", f"{r['submitted']:.2f} s")
    table.add_row("first job Running", f"{r['first_running']:.2f} s")
    table.add_row("all jobs Running", f"{r['all_running']:.2f} s")
    table.add_row("pods to Running per second", f"{pods / r['all_running']:.0f}")
    table.add_row("all workers gone after delete", f"{r['cleaned']:.2f} s")
    table.add_row("operator peak RSS", f"{rss:.0f} MiB" if rss else "n/a")
    console.print(table)
