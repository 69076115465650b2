"""`gaudi3 benchmark rest`: what a job that trains and changes nothing costs the API server,
in writes per job per minute, as the API server itself counts them.

The figure is kube-apiserver's own `apiserver_request_total` (its /metrics, read through
the cluster's kubeconfig) for the write verbs on `gauditrainingjobs` (the object, its
status and its scale), before and after a window in which nothing changes but the step.
Beside it, every write the operator could have made (`benchmarks.writes`: the job's
status, its pods, Services, PodGroups and core Events), so an event at rest shows too.
The counter cannot tell whose Event a write was, and other controllers write Events in
the jobs' namespace (on this cluster kube-controller-manager's endpoint controllers,
which refuse the loopback pod IPs and say so again and again), so Event writes are taken
from the Events themselves: the growth of `count` of those whose source is the operator.

- kwok (default): `--jobs` jobs of one simulated worker each, the operator from this tree
  with its defaults (stall clock every 5 s, autoscaler every 10 s) on the cluster's
  Prometheus; a test exporter serves each job's `gaudi3_train_step`, advancing every
  second, and for the autoscaled ones (`--autoscaled`) a load the autoscaler holds at.
- `--real`: one 2-worker job training on the real nodes (`gaudi_devtools.realtraining`'s
  job, on CPU; needs root and a cluster with 2 real nodes), stall detection on and the
  autoscaler deciding on the launchers' own throughput.

The budget is 0.2 writes per job per minute (docs/performance.md).
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from prometheus_client import CollectorRegistry, Gauge, start_http_server
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from gaudi_devtools.benchmarks.support import start_operator
from gaudi_devtools.benchmarks.writes import (
    ControllerWrites,
    controller_writes,
    event_writes,
    request_totals,
)
from gaudi_devtools.cluster.processes import free_port
from gaudi_operator import api
from gaudi_operator.observability.events import EVENT_SOURCE

console = Console()
BUDGET = 0.2  # writes per job per minute at rest
WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "DELETE", "DELETECOLLECTION", "APPLY"})
LOAD_METRIC = "gaudi3_bench_rest_load"


# --- the API server's own count -----------------------------------------------------------


def write_counts(
    metrics_text: str, resource: str = api.PLURAL, group: str = api.GROUP
) -> dict[tuple[str, str], float]:
    """(verb, subresource) -> requests that wrote `resource`, from kube-apiserver's
    /metrics text (`apiserver_request_total`, summed over codes, scopes and versions)."""
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "apiserver_request":
            continue
        for s in family.samples:
            labels = s.labels
            if s.name != "apiserver_request_total" or labels.get("verb") not in WRITE_VERBS:
                continue
            if labels.get("resource") != resource or labels.get("group") != group:
                continue
            if labels.get("dry_run"):
                continue  # nothing was stored
            key = (labels["verb"], labels.get("subresource", ""))
            out[key] = out.get(key, 0.0) + s.value
    return out


def api_metrics(cluster: Any) -> str:
    """The cluster's API server's /metrics (one process: its counters start at 0 when it
    starts)."""
    text: str = cluster.kubectl("get", "--raw", "/metrics").stdout
    return text


def delta(
    before: Mapping[tuple[str, str], float], after: Mapping[tuple[str, str], float]
) -> dict[tuple[str, str], float]:
    keys = set(before) | set(after)
    return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in sorted(keys)}


@dataclass
class Window:
    """Writes of the job resource over a timed window, and what the jobs did meanwhile."""

    jobs: int
    seconds: float
    writes: dict[tuple[str, str], float]
    steps_advanced: float = 0.0  # of the job that advanced least (each must have trained)
    # Every write a job controller makes (status, pods, Services, PodGroups, Events), the
    # Events the operator's own (`event_writes`).
    operator: ControllerWrites = field(default_factory=ControllerWrites)
    others_events: int = 0  # Event writes in the window by other components

    @property
    def total(self) -> float:
        return sum(self.writes.values())

    @property
    def per_job_per_minute(self) -> float:
        return self._rate(self.total)

    @property
    def operator_per_job_per_minute(self) -> float:
        return self._rate(self.operator.total)

    def _rate(self, writes: float) -> float:
        return writes / self.jobs / (self.seconds / 60) if self.jobs and self.seconds else 0.0


def namespace_events(cluster: Any, namespace: str | None) -> dict[str, int]:
    if namespace is None:
        return {}
    return event_writes(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)


def measure(
    cluster: Any,
    jobs: int,
    seconds: float,
    steps: Callable[[], dict[str, float]] | None = None,
    namespace: str | None = None,
) -> Window:
    """Count the job writes of the next `seconds` (and how far every job's step moved);
    with `namespace`, the operator's Event writes are told from others' by the Events."""
    first = steps() if steps else {}
    events0 = namespace_events(cluster, namespace)
    before, t0 = api_metrics(cluster), time.monotonic()
    time.sleep(seconds)
    after, t1 = api_metrics(cluster), time.monotonic()
    events1 = namespace_events(cluster, namespace)
    last = steps() if steps else {}
    moved = [last.get(k, 0.0) - v for k, v in first.items()]
    op = controller_writes(request_totals(before), request_totals(after), api.GROUP, api.PLURAL)
    others = 0
    if namespace is not None:
        grew = {k: n - events0.get(k, 0) for k, n in events1.items()}
        ours = grew.pop(EVENT_SOURCE, 0)
        others = sum(grew.values())
        op = replace(op, events=ours)
    return Window(
        jobs,
        t1 - t0,
        delta(write_counts(before), write_counts(after)),
        min(moved) if moved else 0.0,
        op,
        others,
    )


# --- jobs that train, simulated ------------------------------------------------------------


class TrainingExporter:
    """Serves `gaudi3_train_step` for simulated jobs, advancing every `period` seconds, and
    a load for the autoscaled ones; each series with the `namespace` label Prometheus' pod
    discovery would give it (the folder is scraped with honor_labels)."""

    def __init__(self, targets_dir: Path, name: str, period: float = 1.0) -> None:
        self.registry = CollectorRegistry()
        labels = ["gtj", "gtj_namespace", "namespace", "rank"]
        self.step = Gauge(
            "gaudi3_train_step", "Optimizer steps (simulated)", labels, registry=self.registry
        )
        self.load = Gauge(
            LOAD_METRIC, "Load for the autoscaled jobs", labels[:3], registry=self.registry
        )
        self.jobs: dict[tuple[str, str], float] = {}
        self.period = period
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.port = free_port()
        self._server, _ = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)
        self.target_file = targets_dir / f"{name}.json"
        targets_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.target_file.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"targets": [f"127.0.0.1:{self.port}"]}]))
        tmp.rename(self.target_file)  # atomic: Prometheus never reads half a file
        self._thread = threading.Thread(target=self._train, daemon=True)
        self._thread.start()

    def add(self, namespace: str, job: str, load: float | None = None) -> None:
        with self._lock:
            self.jobs[(namespace, job)] = 0.0
        if load is not None:
            self.load.labels(gtj=job, gtj_namespace=namespace, namespace=namespace).set(load)

    def steps(self) -> dict[str, float]:
        with self._lock:
            return {f"{ns}/{job}": s for (ns, job), s in self.jobs.items()}

    def _train(self) -> None:
        while not self._stop.wait(self.period):
            with self._lock:
                for (ns, job), step in self.jobs.items():
                    self.jobs[(ns, job)] = step + 1
                    self.step.labels(gtj=job, gtj_namespace=ns, namespace=ns, rank="0").set(
                        step + 1
                    )

    def close(self) -> None:
        self._stop.set()
        self.target_file.unlink(missing_ok=True)
        self._server.shutdown()
        self._server.server_close()


def kwok_job(name: str, autoscaled: bool) -> dict[str, Any]:
    """One simulated worker of one HPU; autoscaled: a load of 100 per worker, on target."""
    spec: dict[str, Any] = {
        "image": "gaudi-train:rest",
        "hpusPerWorker": 1,
        "workers": {"replicas": 1, "minReplicas": 1, "maxReplicas": 2},
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
    }
    if autoscaled:
        spec["autoscaling"] = {
            "enabled": True,
            "metric": {
                "query": f'sum({LOAD_METRIC}{{gtj="$job"}})',
                "target": 100,
                "type": "AverageValue",
            },
        }
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": name},
        "spec": spec,
    }


def apply_kwok_jobs(
    cluster: Any, ns: str, exporter: TrainingExporter, jobs: int, autoscaled: int
) -> Callable[[], bool]:
    """`jobs` kwok jobs rest-0… in `ns`, the first `autoscaled` of them autoscaled, their
    steps (and load) served by `exporter`; returns the check that all of them settled."""
    names = [f"rest-{i}" for i in range(jobs)]
    for i, name in enumerate(names):
        exporter.add(ns, name, load=100.0 if i < autoscaled else None)
        body = kwok_job(name, autoscaled=i < autoscaled)
        cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(body))

    def all_settled() -> bool:
        st = job_status(cluster, ns)
        return all(settled(st.get(n, {}), i < autoscaled) for i, n in enumerate(names))

    return all_settled


def job_status(cluster: Any, ns: str) -> dict[str, dict[str, Any]]:
    out = cluster.kubectl("get", api.PLURAL, "-n", ns, "-o", "json").stdout
    return {j["metadata"]["name"]: j.get("status") or {} for j in json.loads(out)["items"]}


# Decisions on their way to another (a window or a check running, no metric yet).
UNSETTLED = frozenset({"Stabilizing", "VerifyingScaleUp", "MetricsUnavailable", "ManualScale"})


def settled(status: Mapping[str, Any], autoscaled: bool) -> bool:
    """Running, its first step recorded and, when autoscaled, a decision that holds."""
    if status.get("phase") != "Running" or (status.get("progress") or {}).get("step") is None:
        return False
    last = (status.get("autoscaling") or {}).get("lastDecision") or {}
    return not autoscaled or (last.get("value") is not None and last.get("reason") not in UNSETTLED)


def wait(what: str, check: Callable[[], bool], timeout: float, every: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(every)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class Result:
    mode: str
    window: Window
    notes: list[str] = field(default_factory=list)


def run_kwok(
    c: Any, jobs: int, autoscaled: float, warmup: float, seconds: float, operator: bool
) -> Result:
    from gaudi_devtools.crd import install_crds

    install_crds(c)
    ns = f"gaudi3-bench-rest-{uuid.uuid4().hex[:6]}"
    c.kubectl("create", "namespace", ns)
    exporter = TrainingExporter(c.targets_dir, ns)
    proc = None
    n_auto = round(jobs * autoscaled)
    try:
        if operator:
            log = c.dir / "logs" / "bench-rest-operator.log"
            proc = start_operator(Path(c.kubeconfig), log, "--prometheus-url", c.prometheus_url)
        all_settled = apply_kwok_jobs(c, ns, exporter, jobs, n_auto)
        wait(f"{jobs} jobs running, their first step recorded", all_settled, 300)
        time.sleep(warmup)
        window = measure(c, jobs, seconds, exporter.steps, namespace=ns)
        return Result(f"kwok: {jobs} jobs, {n_auto} autoscaled", window)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        exporter.close()
        c.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def run_real(c: Any, warmup: float, seconds: float, autoscale: bool, operator: bool) -> Result:
    from gaudi_devtools import realtraining as rt
    from gaudi_devtools.crd import install_crds

    install_crds(c)
    ns = f"gaudi3-bench-rest-{uuid.uuid4().hex[:6]}"
    checkpoints = c.dir / "checkpoints" / ns
    checkpoints.mkdir(parents=True)
    os.chown(checkpoints, rt.TRAINER_UID, -1)
    c.kubectl("create", "namespace", ns)
    proc = None
    name = "rest"
    try:
        if operator:
            log = c.dir / "logs" / "bench-rest-operator.log"
            proc = start_operator(Path(c.kubeconfig), log, "--prometheus-url", c.prometheus_url)
        wait(
            "the default service account",
            lambda: c.kubectl("get", "sa", "default", "-n", ns, check=False).returncode == 0,
            60,
        )
        body = rt.job(name, checkpoints, failure_policy={"maxRestarts": 10})
        if autoscale:
            # Any throughput is far above 1 sample/s: the loop decides every pass and holds
            # at maxReplicas (AtMaxReplicas), the decision never changes.
            query = 'sum(gaudi3_train_samples_per_second{gtj="$job"})'
            body["spec"]["autoscaling"] = {
                "enabled": True,
                "metric": {"query": query, "type": "Value", "target": 1},
            }
        c.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(body))
        wait(
            "the job training, its first step recorded",
            lambda: settled(job_status(c, ns).get(name, {}), autoscale),
            600,
            every=2,
        )
        time.sleep(warmup)

        def step() -> dict[str, float]:
            q = f'max(gaudi3_train_step{{gtj="{name}",namespace="{ns}"}})'
            r = httpx.get(f"{c.prometheus_url}/api/v1/query", params={"query": q}, timeout=5)
            found = r.json()["data"]["result"]
            return {name: float(found[0]["value"][1])} if found else {name: 0.0}

        window = measure(c, 1, seconds, step, namespace=ns)
        restarts = job_status(c, ns).get(name, {}).get("restarts", 0)
        notes = [f"restarts during the run: {restarts}"]
        mode = f"real nodes: 1 job of 2 workers{', autoscaled' if autoscale else ''}"
        return Result(mode, window, notes)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        c.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def table(r: Result) -> Table:
    w = r.window
    t = Table(
        title=f"writes at rest ({r.mode}; {w.seconds:.0f} s window; the API server's "
        f"apiserver_request_total for {api.PLURAL})"
    )
    t.add_column("verb")
    t.add_column("subresource")
    t.add_column("writes", justify="right")
    for (verb, sub), n in w.writes.items():
        if n:
            t.add_row(verb, sub or "-", f"{n:g}")
    t.add_row("all", "", f"{w.total:g}")
    t.add_row("per job per minute", "", f"{w.per_job_per_minute:.3f}")
    op = w.operator
    kinds = (
        f"status {op.status}, pods {op.pods}, services {op.services}, events {op.events}, "
        f"other {op.other}"
    )
    t.add_row("the operator's writes, all kinds", kinds, f"{op.total:g}")
    t.add_row("  per job per minute", "", f"{w.operator_per_job_per_minute:.3f}")
    t.add_row("Event writes by other components (not counted)", "", f"{w.others_events:g}")
    t.add_row("budget", "", f"{BUDGET:g}")
    t.add_row("steps advanced (least of the jobs)", "", f"{w.steps_advanced:g}")
    for note in r.notes:
        t.add_row(note, "", "")
    return t


def benchmark_rest(
    cluster: Annotated[
        str, typer.Option(help="Local cluster name (gaudi3 cluster up).")
    ] = "gaudi3",
    jobs: Annotated[int, typer.Option(min=1, max=1000, help="kwok jobs that train.")] = 20,
    autoscaled: Annotated[
        float, typer.Option(min=0, max=1, help="Share of the kwok jobs with the autoscaler on.")
    ] = 0.5,
    warmup: Annotated[float, typer.Option(min=0, help="Seconds after all settled.")] = 30,
    window: Annotated[float, typer.Option(min=10, help="Seconds counted.")] = 300,
    real: Annotated[
        bool, typer.Option("--real", help="One job training on the real nodes (root) instead.")
    ] = False,
    autoscale: Annotated[
        bool,
        typer.Option("--autoscale/--no-autoscale", help="--real: the autoscaler on the job."),
    ] = True,
    up: Annotated[
        bool, typer.Option("--up", help="--real: start the cluster with 2 real nodes if needed.")
    ] = False,
    operator: Annotated[
        bool,
        typer.Option(
            "--start-operator/--no-start-operator",
            help="Run this tree's operator for the run (off: one already runs).",
        ),
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Job writes per job per minute while jobs train and nothing changes (budget 0.2)."""
    from gaudi_devtools.cluster import Cluster

    try:
        if real:
            from gaudi_devtools.benchmarks.recovery import ensure_cluster

            result = run_real(ensure_cluster(cluster, up), warmup, window, autoscale, operator)
        else:
            c = Cluster(cluster)
            if not c.healthy():
                console.print(f"[red]error:[/] cluster {cluster!r} is not up: `gaudi3 cluster up`")
                raise typer.Exit(1)
            result = run_kwok(c, jobs, autoscaled, warmup, window, operator)
    except RuntimeError as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(1) from e
    w = result.window
    if as_json:
        writes = [{"verb": v, "subresource": s, "writes": n} for (v, s), n in w.writes.items()]
        print(
            json.dumps(
                {
                    "mode": result.mode,
                    "jobs": w.jobs,
                    "seconds": w.seconds,
                    "writes": writes,
                    "perJobPerMinute": w.per_job_per_minute,
                    "operatorWrites": w.operator.per(1),
                    "operatorPerJobPerMinute": w.operator_per_job_per_minute,
                    "otherComponentsEventWrites": w.others_events,
                    "stepsAdvanced": w.steps_advanced,
                    "notes": result.notes,
                }
            )
        )
    else:
        console.print(table(result))
    if max(w.per_job_per_minute, w.operator_per_job_per_minute) > BUDGET:
        raise typer.Exit(3)
