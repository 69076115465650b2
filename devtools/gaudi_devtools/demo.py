"""`gaudi3 demo`: the main job. Starts the local Gaudi cluster, runs the operator against
it, applies the elastic example job and shows the operator at work.

It leaves the cluster and operator running so you can explore with kubectl afterwards;
`gaudi3 demo --down` (or `gaudi3 cluster down --name demo`) stops everything.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.panel import Panel

from gaudi_devtools.cluster import Cluster, ClusterError
from gaudi_devtools.cluster.cluster import Settings
from gaudi_devtools.crd import install_crds
from gaudi_operator.api import GROUP, LABEL_JOB_NAME, PLURAL

console = Console()
REPO = Path(__file__).resolve().parents[2]
NAME = "demo"
JOB = "elastic"


def _step(title: str) -> None:
    console.rule(f"[bold]{title}")


def _show(c: Cluster, *args: str) -> str:
    console.print(f"[dim]$ kubectl {' '.join(args)}[/]")
    out = c.kubectl(*args, check=False)
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
        manifest = job_manifest(name, step=2, hpus=8)
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


def demo(
    down: Annotated[bool, typer.Option(help="Stop the demo cluster and exit.")] = False,
    nodes: Annotated[int, typer.Option(min=2, max=32, help="Simulated Gaudi nodes.")] = 4,
) -> None:
    """Run the main job on the local cluster and show the operator at work."""
    c = Cluster(NAME, say=lambda m: console.print(f"[cyan]>[/] {m}"))
    if down:
        c.down()
        console.print("demo cluster stopped")
        return
    try:
        _run(c, nodes)
    except ClusterError as e:
        console.print(f"[red]error:[/] {e}")
        console.print(f"logs: {c.dir / 'logs'}")
        raise typer.Exit(1) from e


def _run(c: Cluster, nodes: int) -> None:
    _step("1. A real control plane with simulated Gaudi 3 nodes")
    c.up(Settings(gaudi_nodes=nodes, node_monitor_grace_seconds=20))
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
        "TYPE:.metadata.labels.habana\\.ai/device\\.type",
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
    _show(c, "apply", "-n", "default", "-f", str(REPO / "examples" / "elastic-4-workers.yaml"))
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

    console.print(
        Panel.fit(
            f"The demo cluster keeps running.\n"
            f'  eval "$(.venv/bin/gaudi3 cluster env --name {NAME})"\n'
            f"  kubectl get gtj,pods -n default\n"
            f"  .venv/bin/gaudi3 demo --down        # stop everything",
            title="explore",
        )
    )
