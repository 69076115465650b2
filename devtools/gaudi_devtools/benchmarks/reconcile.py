"""`gaudi3 benchmark reconcile`: how fast the operator turns many jobs into running workers,
and how much memory it needs for them, beside the same pods created bare.

It submits N jobs of M workers at once to a local cluster, with `gaudi3 operator` running
as a child process, and times until every job reports Running; then deletes them all and
times until every worker is gone. The operator's peak resident memory is read from /proc.
`--versus` names the peers run first, on the same cluster: `bare` creates the same N x M
worker pods directly, with no operator running, 32 requests in flight like the operator
(what the API server, scheduler and kwok manage on their own, the floor); `kubeflow` puts
the same pods through the Kubeflow Training Operator v1 as worker-only PyTorchJobs
(benchmarks/kubeflow.py). One table holds them all, with the ratios.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import aiohttp
import typer
from rich.console import Console
from rich.table import Table

from gaudi_devtools import kube_async as kube
from gaudi_devtools.benchmarks import support
from gaudi_devtools.benchmarks.support import cpu_seconds, peak_rss_mib, rss_mib, start_operator
from gaudi_devtools.benchmarks.writes import controller_writes, read_request_totals
from gaudi_operator import api
from gaudi_operator.jobs import manifests

console = Console()
IN_FLIGHT = 32  # creates at once, for jobs and bare pods alike (the operator's default)


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


BARE_LABEL = "gaudi3.bench/bare"


def bare_pod_manifest(job: str, ns: str, index: int, workers: int, hpus: int) -> dict[str, Any]:
    """The worker pod the operator would create, without its owner and labels (no
    operator is involved, and the garbage collector must not take it for an orphan)."""
    spec = api.GaudiTrainingJobSpec.model_validate(job_manifest(job, workers, hpus)["spec"])
    pod = manifests.worker_pod_manifest(spec, manifests.JobRef(job, ns, "bare"), index, 0)
    pod["metadata"].pop("ownerReferences", None)
    pod["metadata"]["labels"] = {BARE_LABEL: job}
    return pod


async def _namespace(core: Any, ns: str) -> None:
    await core.create_namespace({"metadata": {"name": ns}})
    while True:  # pods are refused until the namespace's default account exists
        try:
            await core.read_namespaced_service_account("default", ns)
            return
        except Exception:
            await asyncio.sleep(0.2)


async def _pod_phases(core: Any, ns: str, selector: str) -> list[str]:
    # Raw JSON: the generated models for 10,000 pods would cost this process seconds.
    # resourceVersion 0: served from the API server's watch cache (as the Kubeflow run
    # polls), not a quorum read of every object from etcd twice a second.
    resp = await core.list_namespaced_pod(
        ns, label_selector=selector, resource_version="0", _preload_content=False
    )
    items = json.loads(await resp.read())["items"]
    return [(p.get("status") or {}).get("phase", "") for p in items]


async def _drop_namespace(core: Any, ns: str, limit_s: float = 300) -> None:
    """Delete the namespace and wait until it is gone: its teardown (the namespace
    controller's and kwok's pod deletes) must not run into the next run's write count."""
    await core.delete_namespace(ns)
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            await core.read_namespace(ns)  # preloaded: only then is a 404 an exception
        except Exception as err:
            if kube.status_code(err) == 404:
                return
        await asyncio.sleep(0.5)


async def _delete_all(call: Callable[[], Awaitable[Any]]) -> None:
    """A collection delete that outlasts a loaded API server's request timeout stops there
    part-way (a 504, or the connection closed under us): ask again until one call gets
    through."""
    while True:
        try:
            await call()
            return
        except (TimeoutError, aiohttp.ClientError):
            continue
        except Exception as err:
            if kube.status_code(err) not in TRANSIENT:
                raise


# A loaded API server answers a big LIST with these now and then; the next poll will do.
TRANSIENT = (429, 500, 503, 504)
REDELETE_SECONDS = 15.0


async def _poll(read: Callable[[], Awaitable[int]]) -> int | None:
    """One reading of a poll, or None when the API server could not answer this time."""
    try:
        return await read()
    except Exception as err:
        if kube.status_code(err) not in TRANSIENT:
            raise
        return None


async def _gone(
    core: Any,
    ns: str,
    selector: str,
    t1: float,
    limit_s: float,
    delete: Callable[[], Awaitable[Any]],
) -> float:
    """Delete, then wait until no pod matches; the delete is sent again every
    REDELETE_SECONDS while pods are left: a loaded API server can end a collection delete
    of thousands part-way, with or without an error (a 10,000-pod run kept 5,949)."""
    await _delete_all(delete)
    last = time.monotonic()

    async def count() -> int:
        return len(await _pod_phases(core, ns, selector))

    with console.status("waiting for every worker to be garbage-collected"):
        while True:
            left = await _poll(count)
            if left == 0:
                return time.monotonic() - t1
            if time.monotonic() - t1 > limit_s:
                raise TimeoutError(f"{left} workers left after {limit_s}s")
            if time.monotonic() - last > REDELETE_SECONDS:
                await _delete_all(delete)
                last = time.monotonic()
            await asyncio.sleep(0.5)


async def _wait_all(
    what: str, total: int, count: Callable[[], Awaitable[int]], t0: float, limit_s: float
) -> tuple[float, float]:
    """Poll `count` until it reaches `total`; seconds since `t0` to the first and to all."""
    first: float | None = None
    with console.status(f"waiting for {total} {what} to run") as status:
        while True:
            running = await _poll(count)
            if running and first is None:
                first = time.monotonic() - t0
            if running is not None:
                status.update(f"{what}: {running}/{total} Running")
            if running == total:
                break
            if time.monotonic() - t0 > limit_s:
                raise TimeoutError(f"only {running}/{total} {what} Running after {limit_s}s")
            await asyncio.sleep(0.5)
    done = time.monotonic() - t0
    return (first if first is not None else done), done


async def _run_bare(
    kubeconfig: str, ns: str, jobs: int, workers: int, hpus: int, limit_s: float
) -> dict[str, Any]:
    clients = await kube.connect(kubeconfig)
    core = clients.core
    try:
        await _namespace(core, ns)
        limit = asyncio.Semaphore(IN_FLIGHT)
        pods = [
            bare_pod_manifest(f"job-{i:05d}", ns, w, workers, hpus)
            for i in range(jobs)
            for w in range(workers)
        ]

        async def submit(pod: dict[str, Any]) -> None:
            async with limit:
                await core.create_namespaced_pod(ns, pod, _preload_content=False)

        before = await read_request_totals(clients)
        t0 = time.monotonic()
        await asyncio.gather(*(submit(p) for p in pods))
        submitted = time.monotonic() - t0

        async def running_pods() -> int:
            return (await _pod_phases(core, ns, BARE_LABEL)).count("Running")

        _, all_running = await _wait_all("bare pods", len(pods), running_pods, t0, limit_s)
        # The benchmark's own pod creates: what a job costs with no controller at all.
        writes = controller_writes(before, await read_request_totals(clients), "", "")
        console.print(f"bare pods: all {len(pods)} Running after {all_running:.2f} s")
        t1 = time.monotonic()
        cleaned = await _gone(
            core,
            ns,
            BARE_LABEL,
            t1,
            limit_s,
            lambda: core.delete_collection_namespaced_pod(
                ns, label_selector=BARE_LABEL, _preload_content=False
            ),
        )
        return {
            "submitted": submitted,
            "all_running": all_running,
            "cleaned": cleaned,
            "writes": writes.per(jobs),
        }
    finally:
        try:
            await _drop_namespace(core, ns)
        finally:
            await clients.close()


async def _run(
    kubeconfig: str, ns: str, jobs: int, workers: int, hpus: int, limit_s: float
) -> dict[str, Any]:
    clients = await kube.connect(kubeconfig)
    core, custom = clients.core, clients.custom
    try:
        await _namespace(core, ns)
        limit = asyncio.Semaphore(IN_FLIGHT)

        async def submit(i: int) -> None:
            async with limit:
                await custom.create_namespaced_custom_object(
                    api.GROUP,
                    api.VERSION,
                    ns,
                    api.PLURAL,
                    job_manifest(f"job-{i:05d}", workers, hpus),
                )

        before = await read_request_totals(clients)
        t0 = time.monotonic()
        await asyncio.gather(*(submit(i) for i in range(jobs)))
        submitted = time.monotonic() - t0

        async def running_jobs() -> int:
            listed = await custom.list_namespaced_custom_object(
                api.GROUP, api.VERSION, ns, api.PLURAL, resource_version="0"
            )
            return sum(
                1 for j in listed["items"] if (j.get("status") or {}).get("phase") == "Running"
            )

        first_running, all_running = await _wait_all("jobs", jobs, running_jobs, t0, limit_s)
        writes = controller_writes(
            before, await read_request_totals(clients), api.GROUP, api.PLURAL
        )
        console.print(f"all {jobs} jobs Running after {all_running:.2f} s")
        console.print(
            f"operator writes, create -> Running: {writes} ({writes.total / jobs:.2f} a job)"
        )
        t1 = time.monotonic()
        cleaned = await _gone(
            core,
            ns,
            api.LABEL_JOB_NAME,
            t1,
            limit_s,
            lambda: custom.delete_collection_namespaced_custom_object(
                api.GROUP, api.VERSION, ns, api.PLURAL
            ),
        )
        return {
            "submitted": submitted,
            "first_running": first_running,
            "all_running": all_running,
            "cleaned": cleaned,
            "writes": writes.per(jobs),
        }
    finally:
        try:
            await _drop_namespace(core, ns)
        finally:
            await clients.close()


def _py_spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """Sample the running operator with py-spy (100 Hz, all threads) until interrupted."""
    exe = Path(sys.executable).parent / "py-spy"
    fmt = "speedscope" if out.suffix == ".json" else "flamegraph"
    cmd = [str(exe), "record", "--pid", str(pid), "--rate", "100", "--format", fmt]
    cmd += ["--output", str(out), "--nonblocking"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1)  # attached before the load starts
    if proc.poll() is not None:
        err = proc.stderr.read().decode() if proc.stderr else ""
        raise RuntimeError(f"py-spy could not attach: {err.strip()}")
    return proc


def _stop_py_spy(proc: subprocess.Popen[bytes], out: Path) -> None:
    proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
    console.print(f"CPU profile of the operator: {out}")


def benchmark_reconcile(
    cluster: Annotated[str, typer.Option(help="Local cluster name (gaudi3 cluster up).")] = (
        "gaudi3"
    ),
    jobs: Annotated[int, typer.Option(min=1, max=5000, help="Jobs submitted at once.")] = 100,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Workers per job.")] = 4,
    hpus_per_worker: Annotated[
        int, typer.Option(callback=support.hpus_per_worker, help="1, 2, 4 or 8.")
    ] = 1,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 600,
    versus: Annotated[
        str,
        typer.Option(
            help="Peers run first on the same cluster, comma-separated: bare (the same pods "
            "created directly, the floor), kubeflow (Kubeflow Training Operator v1.9.3, "
            "`bash hack/toolchain.sh kubeflow-training-operator`); none for neither."
        ),
    ] = "bare",
    profile: Annotated[
        Path | None,
        typer.Option(
            help="Sample the operator with py-spy while it works and write the profile here "
            "(.json: speedscope, else an SVG flame graph)."
        ),
    ] = None,
    memray: Annotated[
        Path | None,
        typer.Option(
            help="Run the operator under memray and write its allocations here (.bin; read "
            "with `memray tree`/`memray flamegraph`). Its RSS then includes memray's own."
        ),
    ] = None,
) -> None:
    """N jobs of M workers submitted at once -> all Running; operator peak memory; the
    same pods created bare."""
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
    peers = {p.strip() for p in versus.split(",") if p.strip() and p.strip() != "none"}
    if peers - {"bare", "kubeflow"}:
        console.print(f"[red]error:[/] --versus takes bare, kubeflow or none, not {versus!r}")
        raise typer.Exit(2)
    install_crds(c)
    kubeconfig = str(c.kubeconfig)
    b: dict[str, Any] | None = None
    kf: Any = None
    if "bare" in peers:
        b = asyncio.run(
            _run_bare(
                kubeconfig, f"bare-{uuid.uuid4().hex[:6]}", jobs, workers, hpus_per_worker, timeout
            )
        )
    if "kubeflow" in peers:
        from gaudi_devtools.benchmarks.kubeflow import run_kubeflow

        console.print(f"Kubeflow Training Operator: {jobs} PyTorchJobs x {workers} workers")
        kf = run_kubeflow(c, jobs, workers, hpus_per_worker, in_flight=IN_FLIGHT, timeout=timeout)
    log = c.dir / "logs" / "bench-reconcile-operator.log"
    python_args = ["-m", "memray", "run", "--force", "-q", "-o", str(memray)] if memray else []
    proc = start_operator(Path(c.kubeconfig), log, python_args=python_args)
    spy = _py_spy(proc.pid, profile) if profile else None
    ns = f"bench-{uuid.uuid4().hex[:6]}"
    try:
        time.sleep(3)  # its watches have listed what there is
        baseline = rss_mib(proc.pid)
        r = asyncio.run(_run(kubeconfig, ns, jobs, workers, hpus_per_worker, timeout))
        rss = peak_rss_mib(proc.pid)
        cpu = cpu_seconds(proc.pid)
    finally:
        if spy is not None and profile is not None:
            _stop_py_spy(spy, profile)
        proc.terminate()
        proc.wait(60)
    if memray:
        console.print(f"operator allocations: {memray} (`python -m memray tree {memray}`)")
    console.print(_table(jobs, workers, need, r, rss, cpu, b, kf, baseline))
    for line in goals(jobs, workers, r, rss, b, kf, baseline):
        console.print(line)


def _table(
    jobs: int,
    workers: int,
    need: int,
    r: dict[str, Any],
    rss: float | None,
    cpu: float | None,
    b: dict[str, Any] | None,
    kf: Any,
    baseline: float | None = None,
) -> Table:
    """One table: this operator, then each peer that ran, then the ratios."""
    pods = jobs * workers
    table = Table(title=f"{jobs} jobs x {workers} workers ({pods} pods, {need} HPUs)")
    table.add_column("measure")
    table.add_column("gaudi-operator", justify="right")
    if kf is not None:
        table.add_column("Kubeflow v1.9.3", justify="right")
    if b is not None:
        table.add_column("bare pods", justify="right")
        table.add_column("gaudi-operator / bare", justify="right")
    if kf is not None and b is not None:
        table.add_column("Kubeflow / bare", justify="right")
    if kf is not None:
        table.add_column("gaudi-operator / Kubeflow", justify="right")

    def cell(value: float | None, fmt: str) -> str:
        return fmt.format(value) if value is not None else "-"

    def ratio(x: float | None, y: float | None) -> str:
        return f"{x / y:.2f}x" if x is not None and y else "-"

    def row(
        what: str,
        ours: float | None,
        theirs: float | None,
        bare: float | None,
        fmt: str = "{:.2f} s",
    ) -> None:
        cells = [what, cell(ours, fmt)]
        if kf is not None:
            cells.append(cell(theirs, fmt))
        if b is not None:
            cells += [cell(bare, fmt), ratio(ours, bare)]
        if kf is not None and b is not None:
            cells.append(ratio(theirs, bare))
        if kf is not None:
            cells.append(ratio(ours, theirs))
        table.add_row(*cells)

    def get(d: dict[str, Any] | None, key: str) -> float | None:
        return d[key] if d is not None else None

    def wrote(d: Any, key: str) -> float | None:
        """Writes per job of one kind, from the API server's request counters."""
        writes = d.get("writes") if isinstance(d, dict) else getattr(d, "writes", None)
        return writes[key] if writes else None

    row(
        f"submitted ({IN_FLIGHT} in flight)",
        r["submitted"],
        kf and kf.submitted,
        get(b, "submitted"),
    )
    row("first job Running", r["first_running"], None, None)
    row("all pods Running", None, kf and kf.all_pods_running, get(b, "all_running"))
    row("all jobs Running", r["all_running"], kf and kf.all_jobs_running, get(b, "all_running"))
    row("all workers gone after delete", r["cleaned"], kf and kf.cleaned, get(b, "cleaned"))
    row(
        "pods Running per second",
        pods / r["all_running"],
        kf and pods / kf.all_jobs_running,
        b and pods / b["all_running"],
        "{:.1f}",
    )
    # The write floor (issue 21): a job of N workers costs at most N + 4 writes to Running.
    row(
        f"writes per job to Running (floor {workers + 4})",
        wrote(r, "total"),
        wrote(kf, "total"),
        wrote(b, "total"),
        "{:.2f}",
    )
    for kind in ("pods", "services", "status", "events", "other"):
        row(f"  {kind}", wrote(r, kind), wrote(kf, kind), wrote(b, kind), "{:.2f}")
    row("operator CPU time (run and delete)", cpu, None, None, "{:.1f} s")
    row("operator RSS before the first job", baseline, None, None, "{:.0f} MiB")
    row("operator peak RSS", rss, kf and kf.peak_rss_mib, None, "{:.0f} MiB")
    return table


def goals(
    jobs: int,
    workers: int,
    r: dict[str, Any],
    rss: float | None,
    b: dict[str, Any] | None,
    kf: Any,
    baseline: float | None,
) -> list[str]:
    """Issue 21's goals for this load, each met or not, with what remains."""
    out = []
    w = r.get("writes") or {}
    if w:
        floor = workers + 4
        extra = {k: w[k] for k in ("pods", "services", "status", "events", "other")}
        verdict = "met" if w["total"] <= floor else "NOT met"
        out.append(
            f"goal: writes per job <= N + 4 = {floor}: {w['total']:.2f}, {verdict} "
            f"({', '.join(f'{k} {v:.2f}' for k, v in extra.items())})"
        )
    target = 1.8 if workers == 1 else 1.15
    if b is not None and b.get("all_running"):
        ratio = r["all_running"] / b["all_running"]
        verdict = "met" if ratio <= target else "NOT met"
        out.append(f"goal: all Running within {target}x bare pods: {ratio:.2f}x, {verdict}")
    if kf is not None and rss is not None and getattr(kf, "peak_rss_mib", None):
        verdict = "met" if rss <= kf.peak_rss_mib else "NOT met"
        out.append(
            f"goal: peak RSS at or below Kubeflow's: {rss:.0f} vs {kf.peak_rss_mib:.0f} MiB, "
            f"{verdict}"
        )
    if jobs * workers >= 10_000 and rss is not None:
        verdict = "met" if rss <= 200 else "NOT met"
        out.append(f"goal: at most 200 MiB at 10,000 pods: {rss:.0f} MiB, {verdict}")
    if rss is not None and baseline is not None:
        out.append(
            f"memory: {baseline:.0f} MiB before the first job, {rss - baseline:.0f} MiB more "
            f"at the peak ({(rss - baseline) * 1024 / max(1, jobs * workers):.0f} KiB a pod)"
        )
    return out
