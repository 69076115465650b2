"""`gaudi3 benchmark failover`: time from an injected failure to the replacement world
running, on the local cluster, for a worker pod failure and for a node failure.

Each trial creates a fresh job, waits until it runs, injects the fault through kwok's
chaos stages (the same ones the tests use), and stops the clock when every worker of the
new generation is Running and none is on the failed node.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer

from gaudi_devtools.benchmarks.support import start_operator as launch_operator
from gaudi_operator import api

FAIL_STAGE = "pod-container-running-failed.stage.kwok.x-k8s.io"
NODE_STAGE = "node-not-ready.stage.kwok.x-k8s.io"
NAMESPACE = "gaudi3-bench"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: with few trials it reports a real run)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


class Bench:
    def __init__(self, kubeconfig: Path, grace: int, timeout: float) -> None:
        self.kubeconfig = kubeconfig
        self.grace = grace
        self.timeout = timeout

    async def __aenter__(self) -> Bench:
        from gaudi_devtools import kube_async as kube

        self.clients = await kube.connect(str(self.kubeconfig))
        self.core, self.custom = self.clients.core, self.clients.custom
        try:
            await self.core.create_namespace({"metadata": {"name": NAMESPACE}})
        except Exception as err:
            if kube.status_code(err) != 409:
                raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.clients.close()

    async def _pods(self, job: str) -> list[Any]:
        sel = f"{api.LABEL_JOB_NAME}={job}"
        return (await self.core.list_namespaced_pod(NAMESPACE, label_selector=sel)).items

    async def _wait(self, what: str, check: Any) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if await check():
                return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"timed out after {self.timeout:.0f}s waiting for {what}")

    async def _running(self, job: str, n: int, gen: int, avoid: str | None = None) -> bool:
        pods = [p for p in await self._pods(job) if not p.metadata.deletion_timestamp]
        return len(pods) == n and all(
            p.status.phase == "Running"
            and p.metadata.labels.get(api.LABEL_GENERATION) == str(gen)
            and p.spec.node_name != avoid
            for p in pods
        )

    async def trial(self, kind: str, workers: int) -> float:
        job = f"bench-{kind}-{uuid.uuid4().hex[:6]}"
        body = {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "metadata": {"name": job},
            "spec": {
                "image": "gaudi-train:bench",
                "hpusPerWorker": 8,  # one worker per node: a node failure hits one worker
                "workers": {"replicas": workers},
                "failurePolicy": {
                    "backoffSeconds": 0,
                    "nodeFailureGraceSeconds": self.grace,
                    "maxRestarts": 100,
                },
            },
        }
        await self.custom.create_namespaced_custom_object(
            api.GROUP, api.VERSION, NAMESPACE, api.PLURAL, body
        )
        bad_node: str | None = None
        try:
            await self._wait(f"{job} running", lambda: self._running(job, workers, 0))
            victim = sorted(await self._pods(job), key=lambda p: p.metadata.name)[-1]
            t0 = time.monotonic()
            if kind == "pod":
                meta = {
                    "labels": {FAIL_STAGE: "true"},
                    "annotations": {f"{FAIL_STAGE}/exit-code": "1", f"{FAIL_STAGE}/delay": "0"},
                }
                await self.core.patch_namespaced_pod(
                    victim.metadata.name, NAMESPACE, {"metadata": meta}
                )
            else:
                bad_node = victim.spec.node_name
                await self.core.patch_node(bad_node, {"metadata": {"labels": {NODE_STAGE: "true"}}})
            await self._wait(
                f"{job} replaced", lambda: self._running(job, workers, 1, avoid=bad_node)
            )
            return time.monotonic() - t0
        finally:
            if bad_node:
                await self.core.patch_node(bad_node, {"metadata": {"labels": {NODE_STAGE: None}}})
                await self._wait(f"node {bad_node} Ready", lambda: self._node_ready(bad_node))
            await self.custom.delete_namespaced_custom_object(
                api.GROUP, api.VERSION, NAMESPACE, api.PLURAL, job
            )
            await self._wait(f"{job} gone", lambda: self._gone(job))

    async def _node_ready(self, name: str) -> bool:
        node = await self.core.read_node(name)
        return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])

    async def _gone(self, job: str) -> bool:
        return not await self._pods(job)


def failover(
    cluster: Annotated[
        str, typer.Option(help="Local cluster name (gaudi3 cluster up).")
    ] = "gaudi3",
    trials: Annotated[int, typer.Option(min=1, help="Trials per failure kind.")] = 5,
    kind: Annotated[
        list[str] | None, typer.Option(help="pod and/or node (repeatable). Default: both.")
    ] = None,
    workers: Annotated[int, typer.Option(min=1, max=4, help="Workers per job (8 HPUs each).")] = 2,
    grace: Annotated[
        int, typer.Option(help="failurePolicy.nodeFailureGraceSeconds of the jobs.")
    ] = 5,
    start_operator: Annotated[
        bool, typer.Option("--start-operator/--no-start-operator", help="Run one for the run.")
    ] = True,
    timeout: Annotated[float, typer.Option(help="Give up on one step after this.")] = 120,
) -> None:
    """Failure injected -> replacement workers Running, p50/p95/max over repeated trials."""
    from gaudi_devtools.cluster import Cluster
    from gaudi_devtools.crd import install_crds

    c = Cluster(cluster)
    if not c.healthy():
        typer.echo(f"cluster {cluster!r} is not up: run `gaudi3 cluster up --name {cluster}`")
        raise typer.Exit(1)
    kinds = kind or ["pod", "node"]
    bad = [k for k in kinds if k not in ("pod", "node")]
    if bad:
        raise typer.BadParameter(f"--kind must be pod or node, got {bad}")
    install_crds(c)
    proc = (
        launch_operator(Path(c.kubeconfig), c.dir / "logs" / "bench-operator.log")
        if (start_operator)
        else None
    )

    async def run() -> dict[str, list[float]]:
        out: dict[str, list[float]] = {k: [] for k in kinds}
        async with Bench(Path(c.kubeconfig), grace, timeout) as bench:
            for k in kinds:
                for i in range(trials):
                    seconds = await bench.trial(k, workers)
                    out[k].append(seconds)
                    typer.echo(f"{k:4} trial {i + 1}/{trials}: {seconds:6.2f} s")
        return out

    try:
        results = asyncio.run(run())
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(20)
    typer.echo(
        f"\nfailure -> replacement Running ({workers} workers x 8 HPUs, "
        f"nodeFailureGraceSeconds={grace}, backoffSeconds=0)"
    )
    typer.echo(f"{'kind':6}{'trials':>7}{'p50 s':>9}{'p95 s':>9}{'max s':>9}{'mean s':>9}")
    for k, values in results.items():
        typer.echo(
            f"{k:6}{len(values):>7}{percentile(values, 50):>9.2f}{percentile(values, 95):>9.2f}"
            f"{max(values):>9.2f}{statistics.mean(values):>9.2f}"
        )


def register(benchmark_app: typer.Typer) -> None:
    benchmark_app.command("failover")(failover)
