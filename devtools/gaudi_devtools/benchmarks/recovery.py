"""`gaudi3 benchmark recovery`: on the real nodes, a worker's launcher is SIGKILLed while
a 2-worker job trains, and the time until the new world completes its first step is
split into phases by the API objects' and the containers' own timestamps.

One job trains for the whole run (the same manifest as tests/cluster/realnodes/
test_training.py, logging every step); each trial waits for the current world to train a
checkpoint interval, kills worker `--worker`'s launcher at a random point of the interval,
and reads:

- kill: this machine's clock at `os.kill` (µs);
- detected: the job's Restarting condition turning True (API time, 1 s, truncated);
- pods created / Running: the new generation's pods' creationTimestamp and container
  startedAt (API times, 1 s), the latest of the workers;
- launchers started: each new launcher's first log line (container runtime's time, ns);
- rendezvous: torchrun's "Rendezvous complete for workers" (LOGLEVEL=INFO), the latest;
- resumed: rank 0's "resumed from step N"; first step: rank 0's first step after it.

Steps lost are the last step the old world completed (rank 0's last step or checkpoint
line, or the newest complete checkpoint on disk) minus the step resumed from.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from gaudi_devtools import realtraining as rt
from gaudi_devtools.benchmarks.failover import percentile
from gaudi_devtools.benchmarks.support import start_operator
from gaudi_devtools.cluster.nodes import REAL_LABEL

JOB = "recovery"
RDZV_LINE = "Rendezvous complete for workers"
PHASES = ("detection", "pod replacement", "rendezvous", "checkpoint load", "first step")
T = TypeVar("T")


@dataclass
class Trial:
    kill: float
    detected: float | None  # Restarting=True, 1 s
    created: float  # the later new pod's creationTimestamp, 1 s
    running: float  # the later new container's startedAt, 1 s
    launched: float  # the later new launcher's first log line
    rendezvous: float
    resumed: float
    first_step: float
    resumed_from: int
    last_before: int
    generation: int

    def phases(self) -> dict[str, float | None]:
        detected = self.detected
        return {
            "detection": None if detected is None else detected - self.kill,
            "pod replacement": self.running - (detected if detected is not None else self.kill),
            "rendezvous": self.rendezvous - self.running,
            "checkpoint load": self.resumed - self.rendezvous,
            "first step": self.first_step - self.resumed,
        }

    def parts(self) -> dict[str, float]:
        """Where pod replacement and rendezvous spend their time."""
        return {
            "kill -> new pods created": self.created - self.kill,
            "created -> Running": self.running - self.created,
            "Running -> launchers' first line": self.launched - self.running,
        }

    @property
    def total(self) -> float:
        return self.first_step - self.kill

    @property
    def lost(self) -> int:
        return self.last_before - self.resumed_from


def wait(what: str, check: Callable[[], T | None], timeout: float, interval: float = 1) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class Kill:
    """A SIGKILL sent to a worker's launcher, and what was seen of the restart since."""

    at: float  # this machine's clock at os.kill
    pid: int
    generation: int  # the world that was killed
    last_before: int  # the last step that world completed
    losses: dict[int, float] = field(default_factory=dict)  # the killed world's, by step
    detected: float | None = None  # Restarting=True, API time
    new_world: bool = False  # a later generation is Running (its logs are read from now on)


class Recovery:
    def __init__(
        self, cluster: Any, ns: str, checkpoints: Path, worker: int, job: str = JOB
    ) -> None:
        self.c, self.ns, self.checkpoints, self.worker = cluster, ns, checkpoints, worker
        self.job = job

    def status(self) -> dict[str, Any]:
        out = self.c.kubectl("get", "gtj", self.job, "-n", self.ns, "-o", "json")
        return dict(json.loads(out.stdout).get("status") or {})

    def generation(self) -> int:
        return int(self.status().get("restartGeneration", 0))

    def stamped(self, generation: int) -> dict[str, list[tuple[float, str]]]:
        logs = rt.pod_logs(self.c, self.ns, self.job, generation, stamps=True)
        return {pod: rt.stamped_lines(text) for pod, text in logs.items()}

    def trained(self, generation: int, interval: int) -> bool:
        """The world has trained a checkpoint interval past its start."""
        lines = [line for pod in self.stamped(generation).values() for _, line in pod]
        start = max([int(m.group(1)) for m in map(rt.RESUME_LINE.search, lines) if m] or [0])
        done = [int(m.group(1)) for m in map(rt.STEP_LINE.search, lines) if m]
        return bool(done) and max(done) > start + interval

    def warm(self, generation: int, interval: int, timeout: float) -> None:
        """Until the current world has trained a checkpoint interval past its start."""
        wait(
            f"generation {generation} training",
            lambda: self.trained(generation, interval),
            timeout,
            interval=2,
        )

    def kill(self) -> Kill:
        """SIGKILL the current world's worker launcher; the last step that world completed
        is read from its logs around the kill."""
        gen = self.generation()
        pid = rt.launcher_pid(self.ns, self.job, self.worker)
        if pid is None:
            raise RuntimeError(f"no launcher process of worker {self.worker} on this machine")
        before = self.stamped(gen)
        at = time.time()
        os.kill(pid, signal.SIGKILL)
        # Rank 0's pod may be deleted soon (RecreateAll): read the old world's log now.
        for pod, lines in self.stamped(gen).items():
            before[pod] = sorted({*before.get(pod, []), *lines})
        # Every step all-reduces with the killed worker, so whatever the old world logged
        # (a step, or a checkpoint, which is written before its step's line) was done
        # before the kill, even when the line came after it.
        lines = [line for pod in before.values() for _, line in pod]
        # A busy rank 0 may log its last line after this read; a checkpoint complete on
        # disk now is for a step done before the kill (the killed rank took part in it).
        last_before = max(
            [
                int(m.group(1))
                for line in lines
                if (m := rt.STEP_LINE.search(line) or rt.CHECKPOINT_LINE.search(line))
            ]
            + rt.checkpoint_steps(self.checkpoints)
        )
        losses = {int(m.group(1)): float(m.group(2)) for m in map(rt.STEP_LINE.search, lines) if m}
        return Kill(at=at, pid=pid, generation=gen, last_before=last_before, losses=losses)

    def poll(self, kill: Kill) -> Trial | None:
        """One look at the restart: notes when it was detected; the trial's milestones once
        the new world has logged its first step after the resume, else None."""
        status = self.status()
        for cond in status.get("conditions") or []:
            if cond["type"] == "Restarting" and cond["status"] == "True" and kill.detected is None:
                kill.detected = rt.parse_time(cond["lastTransitionTime"])
        new_gen = int(status.get("restartGeneration", 0))
        kill.new_world = new_gen > kill.generation and status.get("phase") == "Running"
        if not kill.new_world:
            return None
        got = self._resumed(new_gen)
        if got is None:
            return None
        after, resumed_at, resumed_from, first_step = got
        pods = self._pods(new_gen)
        return Trial(
            kill=kill.at,
            detected=kill.detected,
            created=max(rt.parse_time(p["metadata"]["creationTimestamp"]) for p in pods),
            running=max(self._started(p) for p in pods),
            launched=max(lines[0][0] for lines in after.values() if lines),
            rendezvous=max(
                next(t for t, ln in pod if RDZV_LINE in ln) for pod in after.values() if pod
            ),
            resumed=resumed_at,
            first_step=first_step,
            resumed_from=resumed_from,
            last_before=kill.last_before,
            generation=new_gen,
        )

    def trial(
        self, interval: int, step_seconds: float, rng: random.Random, timeout: float
    ) -> Trial:
        self.warm(self.generation(), interval, timeout)
        time.sleep(rng.uniform(0, interval * step_seconds))  # anywhere in the interval
        kill = self.kill()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.poll(kill)
            if got is not None:
                return got
            # The Restarting condition lasts a few seconds; the new world's logs take longer.
            time.sleep(1 if kill.new_world else 0.4)
        raise RuntimeError(f"timed out after {timeout:.0f} s waiting for the new world")

    def _resumed(
        self, generation: int
    ) -> tuple[dict[str, list[tuple[float, str]]], float, int, float] | None:
        """The world's logs, when and from which step it resumed, and when it finished
        its first step after that; None until it has."""
        after = self.stamped(generation)
        lines = sorted(x for pod in after.values() for x in pod)
        resumed = [(t, int(m.group(1))) for t, ln in lines if (m := rt.RESUME_LINE.search(ln))]
        if not resumed:
            return None
        at, step = resumed[0]
        steps = [t for t, ln in lines if (m := rt.STEP_LINE.search(ln)) and int(m.group(1)) > step]
        return (after, at, step, steps[0]) if steps else None

    def _pods(self, generation: int) -> list[dict[str, Any]]:
        selector = f"{rt.GROUP}/job-name={self.job},{rt.GROUP}/generation={generation}"
        out = self.c.kubectl("get", "pods", "-n", self.ns, "-l", selector, "-o", "json")
        return list(json.loads(out.stdout)["items"])

    @staticmethod
    def _started(pod: dict[str, Any]) -> float:
        state = pod["status"]["containerStatuses"][0]["state"]
        return rt.parse_time(state["running"]["startedAt"])


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def per_trial_table(trials: list[Trial]) -> Table:
    table = Table(title="kill -> first step of the new world, per trial (seconds)")
    for col in ("trial", *PHASES, "total", "resumed from", "last step done", "steps lost"):
        table.add_column(col, justify="right")
    for i, t in enumerate(trials, 1):
        phases = t.phases()
        table.add_row(
            str(i),
            *(_seconds(phases[p]) for p in PHASES),
            f"{t.total:.2f}",
            str(t.resumed_from),
            str(t.last_before),
            str(t.lost),
        )
    return table


def summary_table(trials: list[Trial]) -> Table:
    table = Table(title=f"p50 / p95 over {len(trials)} trials (nearest rank)")
    for col in ("phase", "p50 s", "p95 s", "max s"):
        table.add_column(col, justify="left" if col == "phase" else "right")

    def row(name: str, values: list[float]) -> None:
        if values:
            table.add_row(
                name,
                f"{percentile(values, 50):.2f}",
                f"{percentile(values, 95):.2f}",
                f"{max(values):.2f}",
            )

    for p in PHASES:
        row(p, [v for t in trials if (v := t.phases()[p]) is not None])
    for part in trials[0].parts():
        row(f"  ({part})", [t.parts()[part] for t in trials])
    row("kill -> first new step", [t.total for t in trials])
    row("steps lost", [float(t.lost) for t in trials])
    return table


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def ensure_cluster(name: str, up: bool, real_nodes: int = 2, node_grace: int | None = None) -> Any:
    """The named local cluster with `real_nodes` real nodes (and, when given, the node
    controller's grace `node_grace`), started with `up` if it is not."""
    from gaudi_devtools.cluster import Cluster
    from gaudi_devtools.cluster.cluster import Settings

    c = Cluster(name)
    if c.healthy():
        listed = c.kubectl("get", "nodes", "-l", f"{REAL_LABEL}=true", "-o", "name").stdout
        grace = c.settings.node_monitor_grace_seconds if c.settings else None
        if len(listed.split()) >= real_nodes and node_grace in (None, grace):
            return c
    if not up:
        typer.echo(
            f"cluster {name!r} is not up with {real_nodes} real nodes: run `gaudi3 cluster up "
            f"--name {name} --real-nodes {real_nodes} --preload-image "
            "~/.cache/gaudi3/images/gaudi-train-cpu.tar`, or pass --up"
        )
        raise typer.Exit(1)
    try:
        archive = rt.training_image()
    except RuntimeError as e:
        typer.echo(str(e))
        raise typer.Exit(1) from e
    s = Settings(gaudi_nodes=1, real_nodes=real_nodes, real_node_images=[str(archive)])
    if node_grace is not None:
        s.node_monitor_grace_seconds = node_grace
    c.up(s)
    return c


def recovery(
    cluster: Annotated[
        str, typer.Option(help="Local cluster with 2 real nodes and the training image.")
    ] = "gaudi3",
    trials: Annotated[int, typer.Option(min=1, help="Kills, one per trial.")] = 5,
    up: Annotated[
        bool, typer.Option("--up", help="Start the cluster (1 simulated + 2 real nodes) if needed.")
    ] = False,
    worker: Annotated[int, typer.Option(min=0, max=1, help="Worker whose launcher is killed.")] = 1,
    grace: Annotated[
        int,
        typer.Option(
            min=0, help="terminationGracePeriodSeconds of the workers (the tests' job uses 10)."
        ),
    ] = 10,
    interval: Annotated[int, typer.Option(min=1, help="checkpoint.intervalSteps of the job.")] = 5,
    backoff: Annotated[
        int,
        typer.Option(
            min=0,
            help="failurePolicy.backoffSeconds of the job (the CRD's default is 10, doubled "
            "per restart: one job for all trials would wait longer each time).",
        ),
    ] = 0,
    seed: Annotated[int, typer.Option(help="Seed of the kill times.")] = 1,
    env: Annotated[
        list[str] | None,
        typer.Option(
            "--env",
            metavar="KEY=VALUE",
            help="KEY=VALUE for the workers (repeatable), e.g. GAUDI3_PREFORK=0 to compare "
            "with workers started as fresh interpreters.",
        ),
    ] = None,
    start_op: Annotated[
        bool,
        typer.Option("--start-operator/--no-start-operator", help="Run one for the run."),
    ] = True,
    timeout: Annotated[float, typer.Option(help="Give up on one wait after this.")] = 300,
) -> None:
    """SIGKILL a worker's launcher, time the way to the new world's first step (p50/p95)."""
    from gaudi_devtools.crd import install_crds

    console = Console()
    if not console.is_terminal:
        console = Console(width=150)  # the tables unabridged in a file or the README
    if any("=" not in kv for kv in env or []):
        raise typer.BadParameter("--env takes KEY=VALUE")
    c = ensure_cluster(cluster, up)
    install_crds(c)
    proc = (
        start_operator(Path(c.kubeconfig), c.dir / "logs" / "bench-recovery-operator.log")
        if start_op
        else None
    )
    ns = f"gaudi3-recovery-{uuid.uuid4().hex[:6]}"
    checkpoints = c.dir / "checkpoints" / ns
    checkpoints.mkdir(parents=True)
    os.chown(checkpoints, rt.TRAINER_UID, -1)
    c.kubectl("create", "namespace", ns)
    rt.allow_host_access(c, ns)
    loads = [load_average()]
    done: list[Trial] = []
    try:
        wait(
            "the default service account",
            lambda: c.kubectl("get", "sa", "default", "-n", ns, check=False).returncode == 0,
            60,
        )
        body = rt.job(
            JOB,
            checkpoints,
            interval=interval,
            log_every=1,  # the first step after the resume, and the last before the kill
            failure_policy={"maxRestarts": 1000, "backoffSeconds": backoff},
            # torchrun's "Rendezvous complete" line, and what --env adds.
            env={"LOGLEVEL": "INFO", **dict(kv.split("=", 1) for kv in env or [])},
        )
        body["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = grace
        c.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(body))
        bench = Recovery(c, ns, checkpoints, worker)
        rng = random.Random(seed)
        for i in range(trials):
            t = bench.trial(interval, step_seconds=0.6, rng=rng, timeout=timeout)
            done.append(t)
            loads.append(load_average())
            console.print(
                f"trial {i + 1}/{trials}: kill -> first new step {t.total:.2f} s, resumed from "
                f"step {t.resumed_from}, {t.lost} steps lost (load {loads[-1]})"
            )
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            c.kubectl("delete", "namespace", ns, "--wait=true", check=False, timeout=120)
        shutil.rmtree(checkpoints, ignore_errors=True)
        if proc is not None:
            proc.terminate()
            proc.wait(20)
    if not done:
        raise typer.Exit(1)
    console.print(per_trial_table(done))
    console.print(summary_table(done))
    console.print(
        f"2 workers (one per real node), checkpoint every {interval} steps, backoffSeconds="
        f"{backoff}, terminationGracePeriodSeconds={grace}, {' '.join(env or [])} "
        f"worker {worker}'s launcher "
        f"SIGKILLed; API times have 1 s resolution, log times ns. Load average (1/5/15 min) "
        f"at start and after each trial: {'; '.join(loads)}"
    )


def register(benchmark_app: typer.Typer) -> None:
    benchmark_app.command("recovery")(recovery)
