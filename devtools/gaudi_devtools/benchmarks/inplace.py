"""`gaudi3 benchmark inplace`: a killed worker process, from the kill to the first new step,
on this machine (no cluster): the operator's in-place restart against torchrun's.

Two launchers (`gaudi3-train`, one or more processes each) train the reference model as
two pods would, each on its own loopback address, worker 0 hosting the store. Each
trial waits for some steps, SIGKILLs a worker process of worker 1 at a random moment and
reads the workers' own log lines (ms timestamps, this machine's clock):

- `inplace-peers`: operator-managed recovery (GAUDI3_CONTROL_PORT); a stand-in operator
  posts `restart` as soon as both launchers report `waiting` (no backoff, as the
  operator with `backoffSeconds: 0`), and the new world takes its state from a surviving
  peer;
- `inplace-checkpoint`: the same with GAUDI3_PEER_STATE=0: resumes from the checkpoint;
- `torchrun`: today's path without the operator: torchrun's agent restarts the workers
  (PET_MAX_RESTARTS) and the new world resumes from the checkpoint.

Phases (managed paths): detection (kill -> both launchers `waiting`, as the stand-in
operator polling every 20 ms saw it), restart (decision posted -> rank 0 resumed),
first step (resumed -> rank 0's first new step). Steps redone: the last step rank 0
logged before the kill minus the step the new world resumed at.
"""

from __future__ import annotations

import os
import random
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

PATHS = ("inplace-peers", "inplace-checkpoint", "torchrun")
STEP = re.compile(r"^(\S+ \S+) \[rank 0\] gaudi_train\.workload INFO: step (\d+) loss", re.M)
RESUMED = re.compile(
    r"^(\S+ \S+) \[rank 0\] gaudi_train\.session INFO: resumed from "
    r"(?:peer rank \d+ at step|checkpoint at step|step) (\d+)",
    re.M,
)
SUBNET = "127.0.44"


def stamp(text: str) -> float:
    """A log line's local time (`%(asctime)s`, ms) as Unix seconds."""
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


@dataclass
class Trial:
    kill: float
    last_step: int  # rank 0's last step logged before the kill
    waiting: float | None = None  # both launchers `waiting` (managed)
    decided: float | None = None  # the decision posted (managed)
    resumed: float = 0.0
    resumed_step: int = 0
    first: float = 0.0

    @property
    def total(self) -> float:
        return self.first - self.kill

    @property
    def redone(self) -> int:
        return max(0, self.last_step - self.resumed_step)


@dataclass
class Launcher:
    proc: subprocess.Popen[bytes]
    log: Path
    addr: str

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def workers(self) -> list[int]:
        """Worker processes below this launcher (named gaudi3-worker, or torchrun's)."""
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(stat.parent.name))
        found, todo = [], list(children.get(self.proc.pid, []))
        while todo:
            pid = todo.pop()
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if comm == "gaudi3-worker" or b"gaudi_train.worker" in cmdline:
                found.append(pid)
            else:
                todo.extend(children.get(pid, []))
        return sorted(found)


def free_port(*addrs: str) -> int:
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind((addrs[0], 0))
            port = int(probe.getsockname()[1])
        try:
            for addr in addrs[1:]:
                with socket.socket() as other:
                    other.bind((addr, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port common to the launchers' addresses")


@dataclass
class World:
    path: str
    launchers: list[Launcher] = field(default_factory=list)
    token: str = ""
    control_port: int = 0

    def stop(self) -> None:
        for launcher in self.launchers:
            if launcher.proc.poll() is None:
                launcher.proc.send_signal(signal.SIGTERM)
        for launcher in self.launchers:
            try:
                launcher.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                launcher.proc.kill()
                launcher.proc.wait()


def start_world(path: str, tmp: Path, nproc: int, interval: int, restarts: int) -> World:
    from gaudi_train.benchmark import PACKAGE_ROOT

    addrs = [f"{SUBNET}.1", f"{SUBNET}.2"]
    world = World(path, token=secrets.token_hex(16), control_port=free_port(*addrs))
    rdzv = free_port(addrs[0])
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PET_", "GAUDI3_", "TORCHELASTIC", "PT_HPU_", "HABANA_"))
    }
    base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), base.get("PYTHONPATH")]))
    for i, addr in enumerate(addrs):
        env = {
            **base,
            "OMP_NUM_THREADS": "1",
            "GAUDI3_DEVICE": "cpu",
            "PET_NNODES": "2",
            "PET_RDZV_ENDPOINT": f"{addrs[0]}:{rdzv}",
            "PET_RDZV_ID": f"bench-{path}",
            "PET_MAX_RESTARTS": str(restarts),
            "GAUDI3_POD_IP": addr,
            "GAUDI3_WORKER_INDEX": str(i),
            "GAUDI3_WORLD_PODS": "2",
            "GAUDI3_POD_NAME": f"worker-{i}",
            "GAUDI3_JOB_NAME": "bench",
        }
        if path != "torchrun":
            env["GAUDI3_CONTROL_PORT"] = str(world.control_port)
            env["GAUDI3_CONTROL_TOKEN"] = world.token
        if path == "inplace-checkpoint":
            env["GAUDI3_PEER_STATE"] = "0"
        log = tmp / f"{path}-worker-{i}.log"
        args = [
            sys.executable,
            "-m",
            "gaudi_train.cli",
            f"--nproc={nproc}",
            "--no-metrics",
            "--log-every=1",
            "--max-steps=1000000",
            f"--checkpoint-dir={tmp / (path + '-ckpt')}",
            f"--checkpoint-interval={interval}",
        ]
        with open(log, "wb") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp)
        world.launchers.append(Launcher(proc, log, addr))
    return world


class Decider:
    """The stand-in operator: posts `restart` once both launchers are `waiting`."""

    def __init__(self, world: World) -> None:
        from gaudi_train.control_client import ControlClient

        self.clients = [
            ControlClient(lc.addr, world.control_port, world.token) for lc in world.launchers
        ]
        self.generation = 0
        self.times: list[tuple[float, float]] = []  # (all waiting seen, decision posted)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self) -> None:
        from gaudi_train.control_client import Unreachable
        from gaudi_train.control_protocol import RESTART, WAITING, Decision

        while not self.stopped.is_set():
            try:
                states = [c.status().state for c in self.clients]
            except Unreachable:
                time.sleep(0.02)
                continue
            if all(s == WAITING for s in states):
                seen = time.time()
                self.generation += 1
                decision = Decision(self.generation, RESTART, world_pods=len(self.clients))
                for client in self.clients:
                    client.decide(decision)
                self.times.append((seen, time.time()))
            time.sleep(0.02)


def wait_until(predicate: Any, timeout: float, what: str, world: World) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        for launcher in world.launchers:
            if launcher.proc.poll() is not None:
                tail = "\n".join(launcher.text().splitlines()[-30:])
                raise RuntimeError(f"{world.path}: a launcher exited before {what}:\n{tail}")
        time.sleep(0.05)
    raise RuntimeError(f"{world.path}: timed out waiting for {what}")


def run_path(
    path: str, tmp: Path, trials: int, nproc: int, interval: int, between: int
) -> list[Trial]:
    world = start_world(path, tmp, nproc, interval, restarts=trials + 2)
    decider = Decider(world) if path != "torchrun" else None
    if decider is not None:
        decider.thread.start()
    head = world.launchers[0]
    results: list[Trial] = []
    try:
        for _ in range(trials):
            steps = [int(s) for _, s in STEP.findall(head.text())]
            # At a random point of a checkpoint interval: sometimes during a save.
            target = (steps[-1] if steps else 0) + between + random.randrange(interval)
            wait_until(
                lambda target=target: any(int(s) >= target for _, s in STEP.findall(head.text())),
                600,
                f"step {target}",
                world,
            )
            time.sleep(random.uniform(0, 0.3))  # somewhere inside a step
            victim = world.launchers[1].workers()[-1]
            kill = time.time()
            os.kill(victim, signal.SIGKILL)
            before = [int(s) for t, s in STEP.findall(head.text()) if stamp(t) < kill]
            resumed_at = len(RESUMED.findall(head.text()))

            def first_new_step(resumed_at: int = resumed_at) -> tuple[str, int, str] | None:
                """(resumed time, step, first new step's time) once rank 0 logged both."""
                text = head.text()
                found = list(RESUMED.finditer(text))
                if len(found) <= resumed_at:
                    return None
                last = found[-1]
                step = int(last.group(2))
                for t, s in STEP.findall(text[last.end() :]):
                    if int(s) == step + 1:
                        return last.group(1), step, t
                return None

            wait_until(lambda: first_new_step() is not None, 300, "the first new step", world)
            found = first_new_step()
            assert found is not None
            t_resumed, step, t_first = found
            trial = Trial(kill, before[-1] if before else 0, resumed=stamp(t_resumed))
            trial.resumed_step, trial.first = step, stamp(t_first)
            if decider is not None and decider.times:
                trial.waiting, trial.decided = decider.times[-1]
            results.append(trial)
    finally:
        if decider is not None:
            decider.stopped.set()
        world.stop()
    return results


def p50_p95(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"{statistics.median(ordered):.2f} ({p95:.2f})"


def benchmark_inplace(
    trials: Annotated[int, typer.Option(min=1, help="Kills per path.")] = 5,
    nproc: Annotated[int, typer.Option(min=1, help="Processes per launcher.")] = 1,
    interval: Annotated[int, typer.Option(min=1, help="Checkpoint interval (steps).")] = 5,
    between: Annotated[int, typer.Option(min=1, help="Steps trained between kills.")] = 15,
    paths: Annotated[
        str, typer.Option(help=f"Comma-separated, from: {', '.join(PATHS)}.")
    ] = ",".join(PATHS),
    logs: Annotated[
        Path | None, typer.Option(help="Keep the launchers' logs in this folder.")
    ] = None,
) -> None:
    """Kill -> first new step of a killed worker process, on this machine, per recovery path."""
    chosen = [p.strip() for p in paths.split(",") if p.strip()]
    unknown = sorted(set(chosen) - set(PATHS))
    if unknown:
        raise typer.BadParameter(f"unknown path(s) {unknown}; choose from {', '.join(PATHS)}")
    console = Console()
    load = [os.getloadavg()[0]]
    results: dict[str, list[Trial]] = {}
    with tempfile.TemporaryDirectory(prefix="gaudi3-inplace-") as tmp:
        folder = Path(tmp) if logs is None else logs
        folder.mkdir(parents=True, exist_ok=True)
        for path in chosen:
            with console.status(f"{path}: {trials} kills"):
                results[path] = run_path(path, folder, trials, nproc, interval, between)
            load.append(os.getloadavg()[0])
    table = Table(title=f"gaudi3 benchmark inplace: p50 (p95) s over {trials} kills")
    table.add_column("phase")
    for path in chosen:
        table.add_column(path, justify="right")
    rows: dict[str, Any] = {
        "detection (kill -> all waiting)": lambda t: t.waiting - t.kill if t.waiting else None,
        "decision -> resumed": lambda t: t.resumed - t.decided if t.decided else None,
        "kill -> resumed": lambda t: t.resumed - t.kill,
        "resumed -> first new step": lambda t: t.first - t.resumed,
        "kill -> first new step": lambda t: t.total,
    }
    for label, measure in rows.items():
        cells = []
        for path in chosen:
            values = [v for v in (measure(t) for t in results[path]) if v is not None]
            cells.append(p50_p95(values))
        table.add_row(label, *cells)
    table.add_row(
        "steps redone",
        *(p50_p95([float(t.redone) for t in results[p]]).replace(".00", "") for p in chosen),
    )
    console.print(table)
    console.print(
        f"{nproc} process(es) per launcher, 2 launchers, checkpoint every {interval} steps; "
        f"load average (1 min) {min(load):.1f}-{max(load):.1f}"
    )


def register(benchmark_app: typer.Typer) -> None:
    benchmark_app.command("inplace")(benchmark_inplace)
