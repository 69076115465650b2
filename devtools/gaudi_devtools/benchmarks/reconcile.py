"""`gaudi3 benchmark reconcile`: how fast the operator turns many jobs into running workers,
and how much memory it needs for them, beside the same pods created bare.

It submits N jobs of M workers at once to a local cluster, with `gaudi3 operator` running
as a child process, and times until every job reports Running; then deletes them all and
times until every worker is gone. The operator's peak resident memory is read from /proc.
`--versus` names the peers run first, on the same cluster: `bare` creates the same N x M
worker pods directly, with no operator running, 32 requests in flight like the operator
(what the API server, scheduler and kwok manage on their own, the floor); `kubeflow` puts
the same pods through the Kubeflow Training Operator v1 as worker-only PyTorchJobs
(benchmarks/kubeflow.py); `floor` makes exactly the writes the write floor allows a job,
from the load generator with no operator running (benchmarks/floor.py): the best any
controller making those writes could do here. One table holds them all, with the ratios.
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
from gaudi_devtools.benchmarks.writes import (
    ControllerWrites,
    all_reads,
    all_writes,
    controller_writes,
    read_request_totals,
)
from gaudi_operator import api
from gaudi_operator.jobs import manifests

console = Console()
COMPONENTS = ("kube-apiserver", "etcd", "kube-scheduler", "kube-controller-manager", "kwok")
# CPU seconds used so far by each of the cluster's components, by name.
CpuProbe = Callable[[], dict[str, float]]
IN_FLIGHT = 32  # creates at once, for jobs and bare pods alike (the operator's default)
# This benchmark's own process, which shares the two cores: its creates and watches, and in
# the write-floor run the writes it makes in the operator's place.
GENERATOR = "load generator"


def component_cpu(procs: Any, operator: int | None = None) -> CpuProbe:
    """Read the cluster's components' CPU time (gaudi_devtools.cluster.processes): on two
    shared cores, a run's time follows what the API server, etcd, the scheduler and kwok
    had to do, so each run reports it beside its writes."""

    def probe() -> dict[str, float]:
        out = {}
        for name in COMPONENTS:
            pid = procs.pid(name)
            used = cpu_seconds(pid) if pid is not None else None
            if used is not None:
                out[name] = used
        mine = cpu_seconds(operator) if operator is not None else None
        if mine is not None:
            out["operator"] = mine
        return out

    return probe


def _spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after if k in before}


class Meter:
    """What a run cost from its start: the API server's requests (its own counters) and
    the CPU of every process sharing the cores, this benchmark's included."""

    def __init__(self, clients: kube.Clients, cpu: CpuProbe) -> None:
        self.clients, self.cpu = clients, cpu

    async def start(self) -> Meter:
        self.before = await read_request_totals(self.clients)
        self.cpu0, self.mine0 = self.cpu(), time.process_time()
        return self

    async def read(
        self, jobs: int, group: str, plural: str
    ) -> tuple[ControllerWrites, dict[str, Any]]:
        """The job controller's writes, and the run's result fields for them."""
        spent = _spent(self.cpu0, self.cpu())
        spent[GENERATOR] = time.process_time() - self.mine0
        after = await read_request_totals(self.clients)
        writes = controller_writes(self.before, after, group, plural)
        return writes, {
            "writes": writes.per(jobs),
            "all_writes": all_writes(self.before, after),
            "all_reads": all_reads(self.before, after),
            "cluster_cpu": spent,
        }


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


async def jobs_gone(clients: kube.Clients, ns: str, limit_s: float) -> float:
    """Delete every job of the namespace; seconds until the garbage collector has taken
    all their workers."""
    return await _gone(
        clients.core,
        ns,
        api.LABEL_JOB_NAME,
        time.monotonic(),
        limit_s,
        lambda: clients.custom.delete_collection_namespaced_custom_object(
            api.GROUP, api.VERSION, ns, api.PLURAL
        ),
    )


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


class _Watched:
    """Which objects under `path` are Running, from one watch: a run's times come from the
    events themselves, and observing costs the API server one serialization per change
    where a LIST poll of every object twice a second made it serialize them all again
    (58,000 jobs in a 29-second 1000-job run, more the slower the run: it weighed on the very
    thing it timed)."""

    def __init__(
        self,
        clients: kube.Clients,
        path: str,
        selector: str,
        running: Callable[[dict[str, Any]], bool],
        total: int,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.clients, self.path, self.selector = clients, path, selector
        self.on_event = on_event  # also told of every event (the write-floor run's driver)
        self.is_running, self.total = running, total
        self.running: set[str] = set()
        self.first: float | None = None  # time.monotonic() of the first Running
        self.all: float | None = None  # and of the total-th
        self.task: asyncio.Future[None] | None = None

    def start(self) -> _Watched:
        self.task = asyncio.ensure_future(self._watch())
        return self

    async def _watch(self) -> None:
        version = ""  # none: the API server starts with every object there is
        while self.all is None:
            query = [("watch", "true"), ("labelSelector", self.selector)]
            query += [("allowWatchBookmarks", "true")]
            if version:
                query.append(("resourceVersion", version))
            try:
                resp = await self.clients.api_client.call_api(
                    self.path,
                    "GET",
                    query_params=query,
                    header_params={"Accept": "application/json"},
                    auth_settings=["BearerToken"],
                    _preload_content=False,
                    _request_timeout=3600,
                )
            except (TimeoutError, aiohttp.ClientError):
                await asyncio.sleep(0.5)
                continue
            if resp.status != 200:  # e.g. a kind its CRD has only just made (404): again
                resp.release()
                await asyncio.sleep(0.5)
                continue
            try:
                async for line in resp.content:
                    event = json.loads(line)
                    obj = event["object"]
                    if event["type"] == "ERROR":  # 410 Gone: start over from a listing
                        version = ""
                        self.running.clear()
                        break
                    version = obj["metadata"]["resourceVersion"]
                    if event["type"] != "BOOKMARK":
                        self._see(event["type"], obj)
                    if self.all is not None:
                        return
            except (TimeoutError, aiohttp.ClientError):
                pass
            finally:
                resp.release()

    def _see(self, kind: str, obj: dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(kind, obj)
        name = obj["metadata"]["name"]
        if kind != "DELETED" and self.is_running(obj):
            self.running.add(name)
            if self.first is None:
                self.first = time.monotonic()
            if len(self.running) >= self.total and self.all is None:
                self.all = time.monotonic()
        else:
            self.running.discard(name)

    async def wait(self, what: str, t0: float, limit_s: float) -> tuple[float, float]:
        """Seconds since `t0` to the first and to every object Running."""
        with console.status(f"waiting for {self.total} {what} to run") as status:
            while self.all is None:
                if self.task is not None and self.task.done():
                    self.task.result()  # raises what ended the watch
                if time.monotonic() - t0 > limit_s:
                    raise TimeoutError(
                        f"only {len(self.running)}/{self.total} {what} Running after {limit_s}s"
                    )
                status.update(f"{what}: {len(self.running)}/{self.total} Running")
                await asyncio.sleep(0.2)  # the display only: the times are the events'
        assert self.first is not None
        return self.first - t0, self.all - t0

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()


def _pod_running(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") == "Running"


async def _run_bare(
    kubeconfig: str, ns: str, jobs: int, workers: int, hpus: int, limit_s: float, cpu: CpuProbe
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

        watched = _Watched(
            clients, f"/api/v1/namespaces/{ns}/pods", BARE_LABEL, _pod_running, len(pods)
        ).start()
        meter = await Meter(clients, cpu).start()
        t0 = time.monotonic()
        try:
            await asyncio.gather(*(submit(p) for p in pods))
            submitted = time.monotonic() - t0
            _, all_running = await watched.wait("bare pods", t0, limit_s)
        finally:
            watched.close()
        # The benchmark's own pod creates: what a job costs with no controller at all.
        _, measured = await meter.read(jobs, "", "")
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
            **measured,
        }
    finally:
        try:
            await _drop_namespace(core, ns)
        finally:
            await clients.close()


async def _run(
    kubeconfig: str, ns: str, jobs: int, workers: int, hpus: int, limit_s: float, cpu: CpuProbe
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

        jobs_path = f"/apis/{api.GROUP}/{api.VERSION}/namespaces/{ns}/{api.PLURAL}"
        watched_jobs = _Watched(
            clients,
            jobs_path,
            "",
            lambda j: (j.get("status") or {}).get("phase") == "Running",
            jobs,
        ).start()
        watched_pods = _Watched(
            clients,
            f"/api/v1/namespaces/{ns}/pods",
            api.LABEL_JOB_NAME,
            _pod_running,
            jobs * workers,
        ).start()
        meter = await Meter(clients, cpu).start()
        t0 = time.monotonic()
        try:
            await asyncio.gather(*(submit(i) for i in range(jobs)))
            submitted = time.monotonic() - t0
            first_running, all_running = await watched_jobs.wait("jobs", t0, limit_s)
            _, pods_running = await watched_pods.wait("pods", t0, limit_s)
        finally:
            watched_jobs.close()
            watched_pods.close()
        writes, measured = await meter.read(jobs, api.GROUP, api.PLURAL)
        console.print(f"all {jobs} jobs Running after {all_running:.2f} s")
        console.print(
            f"operator writes, create -> Running: {writes} ({writes.total / jobs:.2f} a job)"
        )
        cleaned = await jobs_gone(clients, ns, limit_s)
        return {
            "submitted": submitted,
            "first_running": first_running,
            "all_pods_running": pods_running,
            "all_running": all_running,
            "cleaned": cleaned,
            **measured,
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
            "created directly), floor (the write floor's writes for each job, made with no "
            "operator: the best any controller making them could do), kubeflow (Kubeflow "
            "Training Operator v1.9.3, `bash hack/toolchain.sh kubeflow-training-operator`); "
            "none for none."
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
    if peers - {"bare", "floor", "kubeflow"}:
        console.print(
            f"[red]error:[/] --versus takes bare, floor, kubeflow or none, not {versus!r}"
        )
        raise typer.Exit(2)
    install_crds(c)
    kubeconfig = str(c.kubeconfig)
    b: dict[str, Any] | None = None
    kf: Any = None
    if "bare" in peers:
        b = asyncio.run(
            _run_bare(
                kubeconfig,
                f"bare-{uuid.uuid4().hex[:6]}",
                jobs,
                workers,
                hpus_per_worker,
                timeout,
                component_cpu(c.procs),
            )
        )
    f: dict[str, Any] | None = None
    if "floor" in peers:
        from gaudi_devtools.benchmarks.floor import run_floor

        console.print(f"write floor, no operator: {jobs} jobs x {workers} workers")
        f = asyncio.run(
            run_floor(
                kubeconfig,
                f"floor-{uuid.uuid4().hex[:6]}",
                jobs,
                workers,
                hpus_per_worker,
                timeout,
                component_cpu(c.procs),
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
        r = asyncio.run(
            _run(
                kubeconfig,
                ns,
                jobs,
                workers,
                hpus_per_worker,
                timeout,
                component_cpu(c.procs, proc.pid),
            )
        )
        rss = peak_rss_mib(proc.pid)
        cpu = cpu_seconds(proc.pid)
    finally:
        if spy is not None and profile is not None:
            _stop_py_spy(spy, profile)
        proc.terminate()
        proc.wait(60)
    if memray:
        console.print(f"operator allocations: {memray} (`python -m memray tree {memray}`)")
    console.print(_table(jobs, workers, need, r, rss, cpu, b, kf, baseline, f))
    for line in goals(jobs, workers, r, rss, b, kf, baseline, f):
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
    f: dict[str, Any] | None = None,
) -> Table:
    """One table: this operator, then each peer that ran, then the ratios."""
    pods = jobs * workers
    table = Table(title=f"{jobs} jobs x {workers} workers ({pods} pods, {need} HPUs)")
    table.add_column("measure")
    table.add_column("gaudi-operator", justify="right")
    if kf is not None:
        table.add_column("Kubeflow v1.9.3", justify="right")
    if f is not None:
        table.add_column("write floor, no operator", justify="right")
    if b is not None:
        table.add_column("bare pods", justify="right")
        table.add_column("gaudi-operator / bare", justify="right")
    if f is not None and b is not None:
        table.add_column("floor / bare", justify="right")
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
        floor: float | None = None,
    ) -> None:
        cells = [what, cell(ours, fmt)]
        if kf is not None:
            cells.append(cell(theirs, fmt))
        if f is not None:
            cells.append(cell(floor, fmt))
        if b is not None:
            cells += [cell(bare, fmt), ratio(ours, bare)]
        if f is not None and b is not None:
            cells.append(ratio(floor, bare))
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
        floor=get(f, "submitted"),
    )
    row("first job Running", r["first_running"], None, None, floor=get(f, "first_running"))
    row(
        "all pods Running",
        r.get("all_pods_running"),
        kf and kf.all_pods_running,
        get(b, "all_running"),
        floor=get(f, "all_pods_running"),
    )
    row(
        "all jobs Running",
        r["all_running"],
        kf and kf.all_jobs_running,
        get(b, "all_running"),
        floor=get(f, "all_running"),
    )
    row(
        "all workers gone after delete",
        r["cleaned"],
        kf and kf.cleaned,
        get(b, "cleaned"),
        floor=get(f, "cleaned"),
    )
    row(
        "pods Running per second",
        pods / r["all_running"],
        kf and pods / kf.all_jobs_running,
        b and pods / b["all_running"],
        "{:.1f}",
        floor=f and pods / f["all_running"],
    )
    # The write floor (issue 21): a job of N workers costs at most N + 4 writes to Running.
    row(
        f"writes per job to Running (floor {workers + 4})",
        wrote(r, "total"),
        wrote(kf, "total"),
        wrote(b, "total"),
        "{:.2f}",
        floor=wrote(f, "total"),
    )
    for kind in ("pods", "services", "status", "events", "other"):
        row(
            f"  {kind}",
            wrote(r, kind),
            wrote(kf, kind),
            wrote(b, kind),
            "{:.2f}",
            floor=wrote(f, kind),
        )

    def everyone(d: dict[str, Any] | None) -> float | None:
        counts = d.get("all_writes") if d is not None else None
        return sum(counts.values()) / jobs if counts else None

    row(
        "API server writes per job, every component",
        everyone(r),
        None,
        everyone(b),
        "{:.2f}",
        floor=everyone(f),
    )

    def spent(d: dict[str, Any] | None, name: str | None = None) -> float | None:
        used = d.get("cluster_cpu") if d is not None else None
        if not used:
            return None
        return sum(used.values()) if name is None else used.get(name)

    row(
        "CPU to all Running (every process)",
        spent(r),
        None,
        spent(b),
        "{:.1f} s",
        floor=spent(f),
    )
    for name in (*COMPONENTS, "operator", GENERATOR):
        row(f"  {name}", spent(r, name), None, spent(b, name), "{:.1f} s", floor=spent(f, name))
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
    f: dict[str, Any] | None = None,
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
        if f is not None and f.get("all_running"):
            # The floor's writes with no operator: what the cluster alone needs for them.
            least = f["all_running"] / b["all_running"]
            if least > target:
                reach = "beyond the goal in this run before any operator work"
            else:
                reach = f"{target - least:.2f}x left for the operator's own work"
            # The load generator's own CPU (Python making the writes) left out: what the
            # cluster's components alone spent on them, against theirs for bare pods.
            alone = [
                sum(v for k, v in (d.get("cluster_cpu") or {}).items() if k in COMPONENTS)
                for d in (f, b)
            ]
            cluster = f", cluster CPU {alone[0] / alone[1]:.2f}x bare pods'" if all(alone) else ""
            out.append(
                f"the write floor with no operator: {least:.2f}x bare pods "
                f"({f['writes']['total']:.2f} writes a job{cluster}); {reach}"
            )
    ours_cpu, bare_cpu = r.get("cluster_cpu"), (b or {}).get("cluster_cpu")
    if ours_cpu and bare_cpu:
        # On shared cores the time follows the CPU every component spent: where it went.
        more = {k: v - bare_cpu.get(k, 0.0) for k, v in ours_cpu.items()}
        parts = ", ".join(
            f"{k} {v:+.1f} s ({v * 1000 / jobs:+.1f} ms a job)"
            for k, v in sorted(more.items(), key=lambda kv: -kv[1])
        )
        total, floor = sum(ours_cpu.values()), sum(bare_cpu.values())
        out.append(
            f"CPU to all Running, every component: {total:.1f} s against {floor:.1f} s for "
            f"bare pods ({total / floor:.2f}x); beyond bare pods: {parts}"
        )
    if kf is not None and rss is not None and getattr(kf, "peak_rss_mib", None):
        verdict = "met" if rss <= kf.peak_rss_mib else "NOT met"
        # The goal is at a thousand jobs; at other loads the line is for reading.
        what = "goal: peak RSS" if jobs >= 1000 else "peak RSS (the goal is at 1,000 jobs)"
        out.append(
            f"{what} at or below Kubeflow's: {rss:.0f} vs {kf.peak_rss_mib:.0f} MiB, {verdict}"
        )
    if jobs * workers >= 10_000 and rss is not None:
        verdict = "met" if rss <= 200 else "NOT met"
        out.append(f"goal: at most 200 MiB at 10,000 pods: {rss:.0f} MiB, {verdict}")
    for who, d in (("gaudi-operator", r), ("bare pods", b)):
        counts = d.get("all_writes") if d is not None else None
        if counts:
            parts = ", ".join(f"{k} {v / jobs:.2f}" for k, v in counts.most_common())
            out.append(f"API server writes per job ({who} run, every component): {parts}")
        reads = d.get("all_reads") if d is not None else None
        if reads:
            parts = ", ".join(f"{k} {v}" for k, v in reads.most_common())
            out.append(f"API server reads in all ({who} run, every component): {parts}")
    if rss is not None and baseline is not None:
        out.append(
            f"memory: {baseline:.0f} MiB before the first job, {rss - baseline:.0f} MiB more "
            f"at the peak ({(rss - baseline) * 1024 / max(1, jobs * workers):.0f} KiB a pod)"
        )
    return out
