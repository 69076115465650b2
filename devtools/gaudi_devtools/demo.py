"""`gaudi3 demo`: the main job. Starts the local Gaudi cluster, runs the operator against
it, applies the elastic example job and shows the operator at work on simulated (kwok)
nodes; then trains for real on two real kubelet nodes, SIGKILLs a worker and shows the
world restart and resume from its checkpoint, live.

It leaves the cluster and operator running so you can explore with kubectl afterwards
(the real training job is deleted: it would keep the CPUs busy); `gaudi3 demo --down`
(or `gaudi3 cluster down --name demo`) stops everything.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from gaudi_devtools import realtraining as rt
from gaudi_devtools.cluster import Cluster, ClusterError
from gaudi_devtools.cluster.cluster import Settings
from gaudi_devtools.cluster.nodes import REAL_LABEL
from gaudi_devtools.crd import install_crds
from gaudi_operator.api import GROUP, LABEL_JOB_NAME, PLURAL

console = Console()
if not console.is_terminal:
    console = Console(width=150)  # tables unabridged in a log file
REPO = Path(__file__).resolve().parents[2]
NAME = "demo"
JOB = "elastic"
# The simulated jobs stay off the real nodes: a real kubelet would try to run their image.
ON_SIMULATED_NODES = {"type": "kwok"}
REAL_JOB = "train"
KILL_AT_STEP = 23  # some seconds of training on screen first
STEPS_AFTER = 15  # steps the new world trains on screen before the demo ends it


def _step(title: str) -> None:
    console.rule(f"[bold]{title}")


def _show(c: Cluster, *args: str, input: str | None = None) -> str:
    console.print(f"[dim]$ kubectl {' '.join(args)}[/]")
    out = c.kubectl(*args, input=input, check=False)
    text = out.stdout if out.returncode == 0 else out.stderr
    console.print(text.rstrip(), highlight=False, markup=False)
    return out.stdout


def _wait(what: str, check: Callable[[], bool], timeout: float = 60) -> None:
    with console.status(f"waiting for {what}"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                console.print(f"[green]✓[/] {what}")
                return
            time.sleep(0.5)
    raise ClusterError(f"timed out waiting for {what}")


def _show_workers(c: Cluster) -> None:
    _show(c, "get", "pods", "-n", "default", "-l", f"{LABEL_JOB_NAME}={JOB}", "-o", "wide")


def _status(c: Cluster) -> dict:
    return _status_of(c, JOB)


def _job_spec(c: Cluster) -> dict:
    out = c.kubectl("get", "gtj", JOB, "-n", "default", "-o", "json", check=False)
    return json.loads(out.stdout).get("spec", {}) if out.returncode == 0 else {}


def _node_of(c: Cluster, pod: str) -> str:
    return c.kubectl("get", "pod", pod, "-n", "default", "-o", "jsonpath={.spec.nodeName}").stdout


def _worker_nodes(c: Cluster) -> set[str]:
    out = c.kubectl(
        "get",
        "pods",
        "-n",
        "default",
        "-l",
        f"{LABEL_JOB_NAME}={JOB}",
        "-o",
        "jsonpath={.items[*].spec.nodeName}",
        check=False,
    )
    return set(out.stdout.split())


def _scale_state(c: Cluster, name: str) -> tuple[int, str]:
    out = c.kubectl("get", "gtj", name, "-n", "default", "-o", "json", check=False)
    if out.returncode != 0:
        return 0, ""
    job = json.loads(out.stdout)
    decision = (job.get("status", {}).get("autoscaling") or {}).get("lastDecision") or {}
    return job["spec"]["workers"]["replicas"], decision.get("message", "")


def _autoscale(c: Cluster) -> None:
    from gaudi_devtools.benchmarks.autoscale import MetricExporter, job_manifest

    name = "autoscaled"
    exporter = MetricExporter(c.targets_dir, "demo-load")
    try:
        exporter.set_load(name, "default", 50)
        manifest = _on_simulated_nodes(job_manifest(name, step=2, hpus=8))
        c.kubectl("delete", "gtj", name, "-n", "default", "--ignore-not-found", "--wait=true")
        c.kubectl("apply", "-n", "default", "-f", "-", input=json.dumps(manifest))
        console.print(
            f"{name}: 1..3 workers of 8 HPUs, target 100 per worker of "
            f'sum(gaudi3_bench_load{{gtj="$job"}}), served by this demo and scraped by the '
            f"cluster's Prometheus; {JOB} still holds 16 of the 32 HPUs"
        )
        _wait(
            f"{name} to run with 1 worker",
            lambda: _scale_state(c, name)[0] == 1 and _status_of(c, name).get("phase") == "Running",
            60,
        )
        console.print("load -> 300 (3 workers wanted; only 2 fit next to the other job)")
        exporter.set_load(name, "default", 300)
        _wait("the scale-up", lambda: _scale_state(c, name)[0] >= 2, 60)
        _wait("2 workers Running", lambda: _status_of(c, name).get("readyReplicas") == 2, 60)
        time.sleep(3)  # one more pass: the loop says why it holds at 2
        console.print(f"autoscaler: {_scale_state(c, name)[1]}")
        console.print("load -> 50 (1 worker is enough)")
        exporter.set_load(name, "default", 50)
        _wait("the scale-down", lambda: _scale_state(c, name)[0] == 1, 60)
        _show(c, "get", "gtj", "-n", "default")
        last = _status_of(c, name).get("lastScale") or {}
        console.print_json(data=last)
    finally:
        exporter.close()
        c.kubectl("delete", "gtj", name, "-n", "default", "--ignore-not-found", "--wait=false")


def _status_of(c: Cluster, name: str) -> dict:
    out = c.kubectl("get", "gtj", name, "-n", "default", "-o", "json", check=False)
    return json.loads(out.stdout).get("status", {}) if out.returncode == 0 else {}


def _start_operator(c: Cluster) -> None:
    # Through the cluster's process table, so `demo --down` and `cluster down` stop it too.
    script = Path(sys.executable).with_name("gaudi3")
    c.procs.start(
        "operator",
        [
            sys.executable,
            str(script),
            "operator",
            "--prometheus-url",
            c.prometheus_url,
            "--health-address",
            "127.0.0.1",
            "--metrics-address",
            "127.0.0.1",
        ],
        # A 2 s autoscaler loop so the demo's resizes show within seconds (default 10 s).
        env={"KUBECONFIG": str(c.kubeconfig), "GAUDI3_AUTOSCALE_INTERVAL_SECONDS": "2"},
    )


def _on_simulated_nodes(manifest: dict[str, Any]) -> dict[str, Any]:
    template = manifest["spec"].setdefault("template", {})
    template.setdefault("spec", {}).setdefault("nodeSelector", {}).update(ON_SIMULATED_NODES)
    return manifest


COLUMNS = ("phase", "restarts", "world size", "step", "loss", "samples/s")


def progress_cells(status: dict[str, Any], p: rt.WorldProgress) -> list[str]:
    """One row of the live view: the job's phase and restarts, then what its ranks'
    metrics endpoints report (a dash while none answers, e.g. during a restart)."""

    def shown(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    return [
        str(status.get("phase") or "-"),
        str(status.get("restarts", 0)),
        shown(p.world_size, "d"),
        shown(p.step, "d"),
        shown(p.loss, ".4f"),
        shown(p.samples_per_second, ".1f"),
    ]


class TrainingView:
    """The real job's numbers in a live table, with what happens printed above it.

    Without a terminal (a log file, CI) rich draws the table once at the end, so the
    numbers are also printed as a line every few seconds."""

    def __init__(self, c: Cluster, ns: str, status: Callable[[], dict[str, Any]]) -> None:
        self.c, self.ns, self._status = c, ns, status
        self.t0 = time.monotonic()
        self.status: dict[str, Any] = {}
        self.progress = rt.WorldProgress(ranks=0)
        self.live = Live(self._table(), console=console, refresh_per_second=4)
        self._printed = 0.0

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def _table(self) -> Table:
        table = Table(title=f"gtj/{REAL_JOB}: its ranks' metrics, read live")
        for col in ("s", *COLUMNS):
            table.add_column(col, justify="right")
        table.add_row(f"{self.elapsed():.0f}", *progress_cells(self.status, self.progress))
        return table

    def update(self) -> rt.WorldProgress:
        self.status = self._status()
        self.progress = rt.scrape_world(self.c, self.ns, REAL_JOB)
        self.live.update(self._table())
        if not console.is_terminal and self.elapsed() - self._printed >= 3:
            self._printed = self.elapsed()
            cells = progress_cells(self.status, self.progress)
            console.print(
                f"  +{self.elapsed():5.1f} s  "
                + "  ".join(f"{k} {v}" for k, v in zip(COLUMNS, cells, strict=True)),
                highlight=False,
            )
        return self.progress

    def event(self, text: str) -> None:
        console.print(f"[bold]+{self.elapsed():5.1f} s[/] {text}", highlight=False)


def _numbers(view: TrainingView) -> str:
    cells = progress_cells(view.status, view.progress)
    return ", ".join(f"{k} {v}" for k, v in zip(COLUMNS[2:], cells[2:], strict=True))


def _until(view: TrainingView, what: str, done: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)
        view.update()


def _pod_uids(c: Cluster, ns: str) -> dict[str, str]:
    selector = f"{LABEL_JOB_NAME}={REAL_JOB}"
    out = c.kubectl("get", "pods", "-n", ns, "-l", selector, "-o", "json")
    return {p["metadata"]["name"]: p["metadata"]["uid"] for p in json.loads(out.stdout)["items"]}


def _trial(
    view: TrainingView, what: str, poll: Callable[[], rt.InPlaceTrial | None]
) -> rt.InPlaceTrial:
    deadline = time.monotonic() + 300
    while True:
        got = poll()
        if got is not None:
            return got
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out after 300 s waiting for {what}")
        time.sleep(0.5)
        view.update()


def _real_training(c: Cluster) -> None:
    ns = "default"
    console.print(
        "2 workers of 1 process each, one per real node (a kubelet on containerd + runc, "
        "host network on its own 127.0.20.x), the CPU training image (torch, gloo), a "
        f"checkpoint every {rt.INTERVAL} steps into a host directory both nodes share, "
        "backoffSeconds 0, restartInPlace (the operator decides every restart):"
    )
    _show(c, "get", "nodes", "-l", f"{REAL_LABEL}=true", "-o", "wide")
    c.kubectl("delete", "gtj", REAL_JOB, "-n", ns, "--ignore-not-found", "--wait=true")
    rt.allow_host_access(c, ns)  # hostNetwork and hostPath, if the chart's policy is there
    selector = f"{LABEL_JOB_NAME}={REAL_JOB}"
    # A previous run's workers hold the nodes' ports (host network) until they are gone.
    _wait(
        "no workers of an earlier run",
        lambda: not c.kubectl("get", "pods", "-n", ns, "-l", selector, "-o", "name").stdout,
        120,
    )
    checkpoints = c.dir / "checkpoints" / REAL_JOB
    shutil.rmtree(checkpoints, ignore_errors=True)  # train from step 0
    checkpoints.mkdir(parents=True)
    os.chown(checkpoints, rt.TRAINER_UID, -1)
    body = rt.job(
        REAL_JOB,
        checkpoints,
        log_every=1,
        failure_policy={"maxRestarts": 10, "backoffSeconds": 0, "restartInPlace": True},
    )
    _show(c, "apply", "-n", ns, "-f", "-", input=json.dumps(body))

    def status() -> dict[str, Any]:
        return _status_of(c, REAL_JOB)

    view = TrainingView(c, ns, status)
    trials: list[tuple[str, rt.InPlaceTrial]] = []
    try:
        with view.live:
            view.event("job applied; each worker starts Python and torch, then joins the world")
            _until(view, "the first training step", lambda: (view.progress.step or 0) >= 1, 300)
            view.event(f"training: {_numbers(view)}")
            _until(
                view,
                f"step {KILL_AT_STEP}",
                lambda: (view.progress.step or 0) >= KILL_AT_STEP,
                120,
            )
            # 1. A training process dies in its healthy pod: restarted in place.
            uids = _pod_uids(c, ns)
            before = rt.resume_count(c, ns, REAL_JOB)
            killed = rt.kill_training_process(c, ns, REAL_JOB, 1)
            view.event(
                f"[red]SIGKILL[/] worker 1's training process (its launcher and pod live on); "
                f"rank 0 had logged step {killed[1]}"
            )
            trial = _trial(
                view,
                "the world to re-form in place",
                lambda: rt.in_place_trial(c, ns, REAL_JOB, killed, before),
            )
            st = status()
            last = st.get("lastFailure") or {}
            view.event(
                f"the operator judged it (exit code {last.get('exitCode')}, restart "
                f"{st.get('restarts')}, in-place generation {st.get('inPlaceGeneration')}); "
                f"[green]resumed from {trial.source} at step {trial.resumed_from}[/] in the same "
                f"pods ({'same uids' if _pod_uids(c, ns) == uids else 'pods changed!'}); first "
                f"new step {trial.seconds:.2f} s after the kill, steps redone: {trial.redone}"
            )
            trials.append(("process killed: in place", trial))
            goal = trial.resumed_from + STEPS_AFTER
            _until(view, f"step {goal}", lambda: (view.progress.step or 0) >= goal, 120)

            # 2. A launcher dies: its pod fails, the world is recreated from the checkpoint.
            gen = int(view.status.get("restartGeneration", 0))
            pid = rt.launcher_pid(ns, REAL_JOB, 1)
            if pid is None:
                raise ClusterError("no launcher process of worker 1 on this machine")
            last_step = max((s for s, _ in rt.steps(c, ns, REAL_JOB, gen)), default=0)
            at = time.time()
            os.kill(pid, signal.SIGKILL)
            view.event(
                f"[red]SIGKILL[/] worker 1's launcher (pid {pid}): its pod fails, so the "
                "operator recreates every pod (a new generation) from the checkpoint"
            )
            trial = _trial(
                view,
                "the recreated world's first step",
                lambda: rt.in_place_trial(c, ns, REAL_JOB, (at, last_step), 0, gen + 1),
            )
            view.event(
                f"[green]resumed from {trial.source} at step {trial.resumed_from}[/] in new pods; "
                f"first new step {trial.seconds:.2f} s after the kill, steps redone: "
                f"{trial.redone}"
            )
            trials.append(("launcher killed: pods recreated", trial))
            goal = trial.resumed_from + STEPS_AFTER
            _until(view, f"step {goal}", lambda: (view.progress.step or 0) >= goal, 120)
            view.event(f"training goes on: {_numbers(view)}")
        if not console.is_terminal:
            console.line()  # rich leaves a file's cursor after the table's last line
        console.print(trials_table(trials))
    finally:
        # Training would keep both CPUs busy after the demo.
        c.kubectl("delete", "gtj", REAL_JOB, "-n", ns, "--ignore-not-found", "--wait=false")
        console.print(f"deleted gtj/{REAL_JOB} (the real nodes stay up, idle)")


def trials_table(trials: list[tuple[str, rt.InPlaceTrial]]) -> Table:
    """Kill -> first new step per failure, split where the launchers' logs allow (a
    recreated world's new launchers log no `waiting` or decision: a dash)."""
    table = Table(title="kill -> first new step, on the real nodes (s)")
    phases = ("detect", "decide", "re-form", "first step")
    for col in ("failure", *phases, "total", "resumed from", "at step", "steps redone"):
        table.add_column(col, justify="right")
    for what, t in trials:
        split = t.phases
        cells = ["-" if split[p] is None else f"{split[p]:.2f}" for p in phases]
        table.add_row(
            what, *cells, f"{t.seconds:.2f}", t.source, str(t.resumed_from), str(t.redone)
        )
    return table


def _real_nodes_possible() -> str | None:
    """Why the real part cannot run here, or None."""
    if os.geteuid() != 0:
        return "real nodes need root (cgroups, mounts, containerd): run the demo as root"
    return None


def demo(
    down: Annotated[bool, typer.Option(help="Stop the demo cluster and exit.")] = False,
    nodes: Annotated[int, typer.Option(min=2, max=32, help="Simulated Gaudi nodes.")] = 4,
    real: Annotated[
        bool,
        typer.Option(
            "--real/--no-real",
            help="Also train for real on 2 real kubelet nodes and recover from a killed "
            "worker (needs root; builds the CPU training image once).",
        ),
    ] = True,
) -> None:
    """Run the main job on the local cluster and show the operator at work."""
    c = Cluster(NAME, say=lambda m: console.print(f"[cyan]>[/] {m}"))
    if down:
        c.down()
        console.print("demo cluster stopped")
        return
    if real and (why := _real_nodes_possible()):
        console.print(f"[yellow]skipping real training:[/] {why} (--no-real skips it quietly)")
        real = False
    try:
        _run(c, nodes, real)
    except (ClusterError, RuntimeError) as e:
        console.print(f"[red]error:[/] {e}")
        console.print(f"logs: {c.dir / 'logs'}")
        raise typer.Exit(1) from e


def _up(c: Cluster, nodes: int, real: bool) -> None:
    images = [str(rt.training_image())] if real else []
    c.up(
        Settings(
            gaudi_nodes=nodes,
            node_monitor_grace_seconds=20,
            real_nodes=2 if real else 0,
            real_node_images=images,
        )
    )
    s = c.settings
    if real and s is not None and images[0] not in s.real_node_images:
        # Nodes that started without the image (another `up`): import it into each.
        console.print("importing the training image into the real nodes")
        c.real_nodes.import_image(Path(images[0]))


def _run(c: Cluster, nodes: int, real: bool) -> None:
    _step(f"1. A real control plane, simulated Gaudi 3 nodes{' and 2 real ones' if real else ''}")
    _up(c, nodes, real)
    _show(c, "version")
    _show(
        c,
        "get",
        "nodes",
        "-o",
        "custom-columns=NODE:.metadata.name,"
        "READY:.status.conditions[?(@.type=='Ready')].status,"
        "HPUS:.status.allocatable.habana\\.ai/gaudi,"
        "HUGEPAGES:.status.allocatable.hugepages-2Mi,"
        "TYPE:.metadata.labels.habana\\.ai/device\\.type,"
        "KIND:.metadata.labels.type",
    )

    _step("2. The GaudiTrainingJob API and the operator")
    install_crds(c)
    _show(c, "get", "crd", f"{PLURAL}.{GROUP}")
    if c.procs.pid("operator") is None:
        _start_operator(c)
        console.print(f"operator started; log: {c.procs.logs / 'operator.log'}")
    else:
        console.print("operator already running")

    _step("3. An elastic 4-worker job (2..8 workers, 8 HPUs each)")
    c.kubectl("delete", "gtj", JOB, "-n", "default", "--ignore-not-found", "--wait=true")
    example = REPO / "examples" / "elastic-4-workers.yaml"
    console.print(
        f"{example.relative_to(REPO)}, kept on the simulated nodes (nodeSelector type=kwok)"
    )
    manifest = _on_simulated_nodes(yaml.safe_load(example.read_text()))
    _show(c, "apply", "-n", "default", "-f", "-", input=json.dumps(manifest))
    _wait("the job to reach Running", lambda: _status(c).get("phase") == "Running", 90)
    _show(c, "get", "gtj", "-n", "default")
    _show_workers(c)
    _show(
        c,
        "get",
        "--raw",
        f"/apis/gaudi.scalestarter.dev/v1alpha1/namespaces/default/gauditrainingjobs/{JOB}/scale",
    )

    _step("4. Resize through the scale subresource, keeping the global batch")
    console.print(
        "3 workers x 8 HPUs cannot keep globalBatchSize 1024 at microBatchSize 8, "
        "so the API server refuses it:"
    )
    _show(c, "scale", "gtj", JOB, "-n", "default", "--replicas=3")
    _show(c, "scale", "gtj", JOB, "-n", "default", "--replicas=2")
    _wait(
        "2 ready workers",
        lambda: _status(c).get("readyReplicas") == 2 and _status(c).get("replicas") == 2,
        90,
    )
    _show(c, "get", "gtj", "-n", "default")

    _step("5. A worker is OOM-killed: the world is recreated and resumes from its checkpoint")
    pod = f"{JOB}-worker-1"
    console.print(f"injecting exit code 137 (OOMKilled) into {pod} through kwok's chaos stage")
    c.kubectl(
        "annotate",
        "pod",
        pod,
        "-n",
        "default",
        "--overwrite",
        "pod-container-running-failed.stage.kwok.x-k8s.io/exit-code=137",
        "pod-container-running-failed.stage.kwok.x-k8s.io/reason=OOMKilled",
    )
    c.kubectl(
        "label",
        "pod",
        pod,
        "-n",
        "default",
        "--overwrite",
        "pod-container-running-failed.stage.kwok.x-k8s.io=true",
    )
    _wait("the restart to be recorded", lambda: _status(c).get("restarts", 0) >= 1, 60)
    _wait(
        "the job to run again",
        lambda: _status(c).get("phase") == "Running" and _status(c).get("readyReplicas") == 2,
        120,
    )
    _show(c, "get", "gtj", "-n", "default")
    st = _status(c)
    console.print_json(
        data={k: st.get(k) for k in ("restarts", "restartGeneration", "lastFailure")}
    )
    uid = c.kubectl("get", "gtj", JOB, "-n", "default", "-o", "jsonpath={.metadata.uid}").stdout
    _show(
        c,
        "get",
        "events",
        "-n",
        "default",
        "--field-selector",
        f"involvedObject.uid={uid}",
        "--sort-by=.lastTimestamp",
    )

    _step("6. A node goes NotReady: workers move after the grace, not after 300 s")
    node = _node_of(c, f"{JOB}-worker-0")
    grace = _job_spec(c).get("failurePolicy", {}).get("nodeFailureGraceSeconds", 30)
    console.print(
        f"{JOB}-worker-0 runs on {node}; turning {node} NotReady "
        f"(nodeFailureGraceSeconds={grace}; Kubernetes would evict after 300 s)"
    )
    c.kubectl("label", "node", node, "--overwrite", "node-not-ready.stage.kwok.x-k8s.io=true")
    t0 = time.monotonic()
    try:
        _wait(
            f"the workers to leave {node}",
            lambda: node not in _worker_nodes(c) and _status(c).get("readyReplicas") == 2,
            grace + 90,
        )
        console.print(f"moved after {time.monotonic() - t0:.1f} s")
        _show_workers(c)
        st = _status(c)
        console.print_json(
            data={k: st.get(k) for k in ("restarts", "excludedNodes", "lastFailure")}
        )
    finally:
        c.kubectl("label", "node", node, "node-not-ready.stage.kwok.x-k8s.io-")

    _step("7. Autoscaling on a real Prometheus metric, within what the cluster can place")
    _autoscale(c)

    if real:
        _step(
            "8. Real training on real nodes: a killed process restarts in place, "
            "a killed launcher recreates the pods"
        )
        _real_training(c)

    lines = [
        "The demo cluster keeps running.",
        f'  eval "$(.venv/bin/gaudi3 cluster env --name {NAME})"',
        "  kubectl get gtj,pods -n default",
        *(
            ["  kubectl get nodes -L type           # simulated (kwok) and real nodes"]
            if real
            else []
        ),
        "  .venv/bin/gaudi3 demo --down        # stop everything",
    ]
    console.print(Panel.fit("\n".join(lines), title="explore"))
