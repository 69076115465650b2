"""Fixtures that run the real launcher (torchrun + gloo on CPU) for the training tests."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TRAINING_IMAGE = REPO / "training-image"
# A stand-in for Intel's habana_frameworks that records what is asked of it (see its
# __init__.py); on a child's PYTHONPATH, `import torch` loads it as Intel's images do.
FAKE_HABANA = Path(__file__).resolve().parent / "fake_habana"
BRIDGE = "habana_frameworks"
STEP_LINE = re.compile(r"\[rank 0\] gaudi_train\.workload INFO: step (\d+) loss ([0-9.]+)")


def comm(proc: Path) -> str:
    try:
        return (proc / "comm").read_text().strip()
    except OSError:
        return ""


def free_port_pair() -> int:
    """A port P with P and P + 1 free (two processes serve metrics on P + local rank)."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return int(port)
    raise RuntimeError("no two consecutive free ports")


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment minus any job settings, plus `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PET_", "GAUDI3_", "TORCHELASTIC", "PT_HPU_", "HABANA_"))
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TRAINING_IMAGE), env.get("PYTHONPATH")]))
    env["GAUDI3_DEVICE"] = "cpu"  # the same path on every test machine
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


@dataclass
class Run:
    """A launcher process whose combined output goes to a log file."""

    proc: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def steps(self) -> list[tuple[int, float]]:
        """(step, loss) lines logged by rank 0, in order."""
        return [(int(s), float(loss)) for s, loss in STEP_LINE.findall(self.text())]

    def wait(self, timeout: float = 240) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(
                f"launcher still running after {timeout}s:\n{self.tail()}"
            ) from None

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 120, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"launcher exited before {what}:\n{self.tail()}")
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}:\n{self.tail()}")

    def wait_for_step(self, step: int, timeout: float = 120) -> None:
        self.wait_for(lambda: any(s >= step for s, _ in self.steps()), timeout, f"step {step}")

    def workers(self) -> list[int]:
        """PIDs of the worker processes this launcher runs: started by torchrun, forked
        by the launcher (gaudi_train.prefork) or by its fork server (operator-managed
        recovery), which are named `gaudi3-worker`."""
        parents: dict[int, list[Path]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents.setdefault(int(fields[1]), []).append(stat.parent)
        servers = [p for p in parents.get(self.proc.pid, []) if comm(p) == "gaudi3-forksrv"]
        candidates = parents.get(self.proc.pid, []) + [
            child for server in servers for child in parents.get(int(server.name), [])
        ]
        found = []
        for proc in candidates:
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"gaudi_train.worker" in cmdline or comm(proc) == "gaudi3-worker":
                found.append(int(proc.name))
        return sorted(found)

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_launcher(args: tuple[str, ...], log: Path, cwd: Path, env: dict[str, str] | None) -> Run:
    """Start `gaudi3-train ARGS` (as `python -m gaudi_train.cli`) in the background."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gaudi_train.cli", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env or clean_env(),
            cwd=cwd,
        )
    return Run(proc, log)


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    """`launch(*args, env=None)` starts the launcher; every run is stopped at teardown."""
    runs: list[Run] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Run:
        run = start_launcher(args, tmp_path / f"launcher-{len(runs)}.log", tmp_path, env)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.stop()


@pytest.fixture
def job_env() -> Callable[..., dict[str, str]]:
    """`job_env(**extra)`: a clean launcher environment with `extra` variables."""
    return clean_env


@pytest.fixture
def metrics_port() -> int:
    """A free port P with P + 1 free as well (ranks serve on P + local rank)."""
    return free_port_pair()


def bridge_modules() -> list[str]:
    return [n for n in sys.modules if n == BRIDGE or n.startswith(BRIDGE + ".")]


@pytest.fixture
def fake_habana(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """The fake habana_frameworks importable in this process; yields its log file.

    Modules it imported are dropped afterwards, so the next test (and the real
    `habana_frameworks` check in gaudi_train.prefork) sees no bridge."""
    log = tmp_path / "fake-habana.jsonl"
    monkeypatch.setenv("FAKE_HABANA_LOG", str(log))
    for name in bridge_modules():
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(FAKE_HABANA))
    yield log
    for name in bridge_modules():
        del sys.modules[name]
