"""`gaudi3 demo`: the main job. Starts the local Gaudi cluster, runs the operator against
it, applies the elastic example job and shows the operator at work.

It leaves the cluster and operator running so you can explore with kubectl afterwards;
`gaudi3 demo --down` (or `gaudi3 cluster down --name demo`) stops everything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.panel import Panel

from gaudi_operator.devcluster import Cluster, ClusterError
from gaudi_operator.devcluster.cluster import Settings

console = Console()
REPO = Path(__file__).resolve().parents[2]
NAME = "demo"
JOB = "llama-elastic"


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


def _job(c: Cluster) -> dict:
    out = c.kubectl("get", "gtj", JOB, "-n", "default", "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def _start_operator(c: Cluster) -> subprocess.Popen[bytes]:
    log = (c.dir / "logs" / "operator.log").open("ab")
    exe = Path(sys.executable).with_name("gaudi3")
    proc = subprocess.Popen(
        [str(exe), "operator", "--prometheus-url", c.prometheus_url],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "KUBECONFIG": str(c.kubeconfig)},
        start_new_session=True,
    )
    (c.dir / "pids" / "operator.pid").write_text(f"{proc.pid}\n{exe}\n")
    return proc


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
        "-L",
        "habana.ai/device.type",
        "-o",
        "custom-columns=NODE:.metadata.name,"
        "READY:.status.conditions[?(@.type=='Ready')].status,"
        "HPUS:.status.allocatable.habana\\.ai/gaudi,"
        "HUGEPAGES:.status.allocatable.hugepages-2Mi,TYPE:.metadata.labels.habana\\.ai/device\\.type",
    )

    _step("2. The GaudiTrainingJob API and the operator")
    _show(c, "apply", "-f", str(REPO / "crds"))
    c.kubectl("wait", "--for=condition=Established", "crd/gauditrainingjobs.gaudi.scalestarter.dev")
    if c.procs.pid("operator") is None:
        _start_operator(c)
        console.print(f"operator started; log: {c.dir / 'logs' / 'operator.log'}")
    else:
        console.print("operator already running")

    _step("3. An elastic 4-worker job (2..8 workers, 8 HPUs each)")
    _show(c, "apply", "-n", "default", "-f", str(REPO / "examples" / "elastic-job.yaml"))
    _wait(
        "the job to reach Running", lambda: _job(c).get("status", {}).get("phase") == "Running", 90
    )
    _show(c, "get", "gtj", "-n", "default")
    _show(
        c,
        "get",
        "pods",
        "-n",
        "default",
        "-l",
        f"gaudi.scalestarter.dev/job-name={JOB}",
        "-o",
        "wide",
    )
    _show(
        c,
        "get",
        "--raw",
        f"/apis/gaudi.scalestarter.dev/v1alpha1/namespaces/default/gauditrainingjobs/{JOB}/scale",
    )

    _step("4. Resize through the scale subresource (kubectl scale)")
    _show(c, "scale", "gtj", JOB, "-n", "default", "--replicas=6")
    _wait("6 ready workers", lambda: _job(c).get("status", {}).get("readyReplicas") == 6, 90)
    _show(c, "get", "gtj", "-n", "default")

    console.print(
        Panel.fit(
            f"The demo cluster keeps running.\n"
            f'  eval "$(.venv/bin/gaudi3 cluster env --name {NAME})"\n'
            f"  kubectl get gtj,pods -n default\n"
            f"  .venv/bin/gaudi3 demo --down        # stop everything",
            title="explore",
        )
    )
