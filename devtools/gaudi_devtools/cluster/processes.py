"""Start, find and stop the cluster's component processes.

Each component runs in its own session (so a signal reaches its whole process group)
with its log in the cluster folder and its pid in ``pids/``. A pid is only trusted when
/proc says the process still runs the command we started: a recycled pid is never killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def _reap(pid: int, timeout: float = 2.0) -> None:
    """Collect the exit status when we are the parent (tests start and stop clusters in
    one process), so no zombie is left behind."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return  # not our child: init reaps it
        if done:
            return
        time.sleep(0.05)


class Processes:
    """The processes of one cluster, tracked through pid files in ``dir/pids``."""

    def __init__(self, cluster_dir: Path) -> None:
        self.dir = cluster_dir
        self.pids = cluster_dir / "pids"
        self.logs = cluster_dir / "logs"

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
        self.pids.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        log = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        log.close()
        (self.pids / f"{name}.pid").write_text(f"{proc.pid}\n{argv[0]}\n")
        return proc.pid

    def pid(self, name: str) -> int | None:
        """The component's pid if it is still running what we started, else None."""
        try:
            pid_text, exe = (self.pids / f"{name}.pid").read_text().splitlines()[:2]
            pid = int(pid_text)
        except (OSError, ValueError):
            return None
        if not Path(f"/proc/{pid}").exists() or is_zombie(pid):
            return None
        cmd = _cmdline(pid)
        # An empty cmdline is a process still inside exec (or a kernel thread, which
        # ignores signals anyway): only a different program means the pid was recycled.
        if cmd and cmd[0] != exe:
            return None
        return pid

    def names(self) -> list[str]:
        if not self.pids.exists():
            return []
        return sorted(p.stem for p in self.pids.glob("*.pid"))

    def stop(self, name: str, timeout: float = 10.0) -> None:
        pid = self.pid(name)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.pid(name) is not None and time.monotonic() < deadline:
                time.sleep(0.1)
            if self.pid(name) is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                while self.pid(name) is not None and time.monotonic() < deadline + 5:
                    time.sleep(0.1)
            _reap(pid)
        (self.pids / f"{name}.pid").unlink(missing_ok=True)

    def strays(self) -> list[int]:
        """Processes that name this cluster's folder in their arguments but have no pid
        file (left by a start that was itself killed): `down` stops them too."""
        marker = f"{self.dir}/"
        tracked = {self.pid(n) for n in self.names()}
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in tracked:
                continue
            pid = int(entry.name)
            if pid != os.getpid() and any(marker in a for a in _cmdline(pid)[1:]):
                found.append(pid)
        return found

    def kill_strays(self, timeout: float = 10.0) -> list[int]:
        pids = self.strays()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(
            Path(f"/proc/{p}").exists() and not is_zombie(p) for p in pids
        ):
            time.sleep(0.1)
        for pid in pids:
            if Path(f"/proc/{pid}").exists() and not is_zombie(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            _reap(pid, 0.5)
        return pids
