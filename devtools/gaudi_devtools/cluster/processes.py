"""Start, find and stop the cluster's component processes.

Each component runs in its own session (so a signal reaches its whole process group)
with its log in the cluster folder and its pid in ``pids/``. A pid is only trusted when
/proc says the process still runs the command we started: a recycled pid is never killed.

Every start also writes the component's spec (argv, env, id) to ``specs/<name>.json``.
When the cluster's supervisor runs (``supervisor.pid``), it is the one that launches the
process from that spec, watches it and restarts it when it exits; ``stop`` removes the
spec first, so a stopped component stays stopped. Without a supervisor, ``start``
launches the process itself, as before.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Ports for servers we start are chosen below the kernel's ephemeral range: a port that
# bind(0) hands out is in that range, and until our server binds it, any client's outgoing
# connection may take it as its local port (seen here as kwok's "address already in use"
# with two test clusters starting at once). Chosen at random from a wide range.
LOWEST_SERVER_PORT = 10000
# A port is free when chosen but only taken when its server binds, seconds later (the last
# of a cluster's components a minute later on a loaded machine). In between, the same port
# must not be handed out again: not to the same cluster's next component, nor to a cluster
# that another process starts at the same moment. Both happened (CI, 2026-12-08: a
# cluster's Prometheus found its port bound). So every port handed out is written to a
# ledger shared by all processes on the machine and skipped for this long.
PORT_HOLD_SECONDS = 600.0


def _ledger() -> Path:
    cache = Path(os.environ.get("GAUDI3_CACHE", Path.home() / ".cache" / "gaudi3"))
    return cache / "server-ports.json"


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def _held_ports() -> Iterator[dict[int, float]]:
    """The ledger's ports still held (port -> when handed out), under an exclusive lock
    across processes; what the caller leaves in the dict is written back."""
    path = _ledger()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        held: dict[int, float] = {}
        with contextlib.suppress(OSError, ValueError, AttributeError):
            held = {int(k): float(v) for k, v in json.loads(path.read_text()).items()}
        now = time.time()
        held = {p: t for p, t in held.items() if now - PORT_HOLD_SECONDS < t <= now}
        yield held
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({str(p): t for p, t in held.items()}))
        tmp.replace(path)


def free_port() -> int:
    """A port free on 127.0.0.1 now, for a server about to listen there, and not handed
    out by this function to anyone else on the machine in the last PORT_HOLD_SECONDS."""
    low = _ephemeral_low()
    first = min(LOWEST_SERVER_PORT, max(1024, low - 1000))
    with _held_ports() as held:
        for _ in range(256 if low - first >= 64 else 0):
            port = random.randrange(first, low)
            if port not in held and _bindable(port):
                held[port] = time.time()
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def rss_bytes(pid: int) -> int | None:
    """Resident memory of a process, from /proc (None when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


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


@dataclass(frozen=True)
class Spec:
    """How to (re)start one component: what the supervisor reads."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # on top of the starter's environment
    # A new id per start() call: the pid file written for this start carries it.
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    # Run (best effort, errors to the log) before every start: to release what an
    # earlier run of the component still holds.
    before: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, text: str) -> Spec:
        d = json.loads(text)
        return cls(
            name=d["name"],
            argv=list(d["argv"]),
            env=dict(d["env"]),
            id=d["id"],
            before=list(d.get("before", [])),
        )


def live_pid(pid_file: Path) -> tuple[int, str] | None:
    """(pid, start id) from a pid file when that process still runs the program it names."""
    try:
        lines = pid_file.read_text().splitlines()
        pid, exe = int(lines[0]), lines[1]
    except (OSError, ValueError, IndexError):
        return None
    if not Path(f"/proc/{pid}").exists() or is_zombie(pid):
        return None
    cmd = _cmdline(pid)
    # An empty cmdline is a process still inside exec (or a kernel thread, which
    # ignores signals anyway): only a different program means the pid was recycled.
    if cmd and cmd[0] != exe:
        return None
    return pid, (lines[2] if len(lines) > 2 else "")


def _signal_and_wait(pid: int, alive: Callable[[], bool], timeout: float) -> None:
    """SIGTERM the process group, SIGKILL it if still there after ``timeout``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        while alive() and time.monotonic() < deadline + 5:
            time.sleep(0.1)
    _reap(pid)


class Processes:
    """The processes of one cluster, tracked through pid files in ``dir/pids``."""

    def __init__(self, cluster_dir: Path) -> None:
        self.dir = cluster_dir
        self.pids = cluster_dir / "pids"
        self.logs = cluster_dir / "logs"
        self.specs = cluster_dir / "specs"
        self.supervisor_pid_file = cluster_dir / "supervisor.pid"
        self.supervisor_ready_file = cluster_dir / "supervisor.ready"
        self.restart_log = cluster_dir / "restarts.jsonl"

    # -- specs, shared with the supervisor ----------------------------------------------
    @contextlib.contextmanager
    def spec_lock(self) -> Iterator[None]:
        """Held while a spec changes and while the supervisor acts on specs, so a stop
        never races a restart of the same component."""
        self.specs.mkdir(parents=True, exist_ok=True)
        with (self.specs / ".lock").open("w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def read_specs(self) -> dict[str, Spec]:
        found = {}
        for path in sorted(self.specs.glob("*.json")) if self.specs.exists() else []:
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                spec = Spec.from_json(path.read_text())
                found[spec.name] = spec
        return found

    def _write_spec(self, spec: Spec) -> None:
        tmp = self.specs / f".{spec.name}.json.tmp"
        tmp.write_text(json.dumps(asdict(spec)))
        tmp.replace(self.specs / f"{spec.name}.json")  # readers never see half a file

    def launch(self, spec: Spec) -> subprocess.Popen[bytes]:
        """Start the process a spec describes and record its pid (the supervisor's and
        the unsupervised path)."""
        self.pids.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / f"{spec.name}.log").open("ab") as log:
            if spec.before:
                with contextlib.suppress(OSError, subprocess.SubprocessError):
                    subprocess.run(
                        spec.before,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,  # errors are what the log needs
                        stderr=log,
                        cwd=self.dir,
                        timeout=30,
                    )
            proc = subprocess.Popen(
                spec.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                env={**os.environ, **spec.env},
                start_new_session=True,
            )
        (self.pids / f"{spec.name}.pid").write_text(f"{proc.pid}\n{spec.argv[0]}\n{spec.id}\n")
        return proc

    def start(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        timeout: float = 30,
        before: list[str] | None = None,
    ) -> int:
        """Start a component (supervised when the cluster's supervisor runs); its pid.
        ``before`` runs ahead of this start and of every restart."""
        spec = Spec(name, list(argv), dict(env or {}), before=list(before or []))
        with self.spec_lock():
            self._write_spec(spec)
            if self.supervisor_pid() is None:
                return self.launch(spec).pid
        # The supervisor launches it, so that it is the parent and sees the exit code.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError, IndexError):
                lines = (self.pids / f"{name}.pid").read_text().splitlines()
                if len(lines) > 2 and lines[2] == spec.id:
                    return int(lines[0])
            if self.supervisor_pid() is None:  # it went away meanwhile: start it ourselves
                with self.spec_lock():
                    if self.read_specs().get(name) == spec:
                        return self.launch(spec).pid
            time.sleep(0.05)
        raise RuntimeError(f"the cluster supervisor did not start {name} within {timeout:.0f}s")

    def pid(self, name: str) -> int | None:
        """The component's pid if it is still running what we started, else None."""
        found = live_pid(self.pids / f"{name}.pid")
        return found[0] if found else None

    def start_id(self, name: str) -> str | None:
        """The spec id the running process of ``name`` was started from."""
        found = live_pid(self.pids / f"{name}.pid")
        return found[1] if found else None

    def _pid_file_lines(self, name: str) -> list[str]:
        try:
            return (self.pids / f"{name}.pid").read_text().splitlines()
        except OSError:
            return []

    def recorded_start_id(self, name: str) -> str | None:
        """The spec id in the pid file, whether or not that process still runs."""
        lines = self._pid_file_lines(name)
        return lines[2] if len(lines) > 2 else None

    def recorded_pid(self, name: str) -> int | None:
        lines = self._pid_file_lines(name)
        return int(lines[0]) if lines and lines[0].isdigit() else None

    def supervised(self) -> list[str]:
        return sorted(self.read_specs())

    # -- the supervisor -----------------------------------------------------------------
    def supervisor_pid(self) -> int | None:
        found = live_pid(self.supervisor_pid_file)
        return found[0] if found else None

    def start_supervisor(
        self, argv: list[str], env: dict[str, str] | None = None, timeout: float = 30
    ) -> int:
        """Start the supervisor; return once it has looked at every spec (adopting what
        runs), so nothing started or killed after this goes unseen."""
        self.logs.mkdir(parents=True, exist_ok=True)
        self.supervisor_ready_file.unlink(missing_ok=True)
        with (self.logs / "supervisor.log").open("ab") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        self.supervisor_pid_file.write_text(f"{proc.pid}\n{argv[0]}\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if self.supervisor_ready_file.read_text().strip() == str(proc.pid):
                    return proc.pid
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the cluster supervisor exited with code {proc.returncode}; "
                    f"see {self.logs / 'supervisor.log'}"
                )
            time.sleep(0.05)
        raise RuntimeError(f"the cluster supervisor did not start within {timeout:.0f}s")

    def stop_supervisor(self, timeout: float = 10.0) -> bool:
        """Stop the supervisor (never its components); True when one was running."""
        pid = self.supervisor_pid()
        if pid is not None:
            _signal_and_wait(pid, lambda: self.supervisor_pid() is not None, timeout)
        self.supervisor_pid_file.unlink(missing_ok=True)
        self.supervisor_ready_file.unlink(missing_ok=True)
        return pid is not None

    def restarts(self) -> list[dict[str, Any]]:
        """Every restart the supervisor made, oldest first."""
        try:
            lines = self.restart_log.read_text().splitlines()
        except OSError:
            return []
        out = []
        for line in lines:
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def names(self) -> list[str]:
        if not self.pids.exists():
            return []
        return sorted(p.stem for p in self.pids.glob("*.pid"))

    def stop(self, name: str, timeout: float = 10.0) -> None:
        # The spec goes first: the supervisor then leaves the component stopped. Under
        # the lock, so a restart in progress has written its pid file when we read it.
        with self.spec_lock():
            (self.specs / f"{name}.json").unlink(missing_ok=True)
        pid = self.pid(name)
        if pid is not None:
            _signal_and_wait(pid, lambda: self.pid(name) is not None, timeout)
        (self.pids / f"{name}.pid").unlink(missing_ok=True)

    def strays(self) -> list[int]:
        """Processes that name this cluster's folder in their arguments but have no pid
        file (left by a start that was itself killed): `down` stops them too."""
        marker = f"{self.dir}/"
        tracked = {self.pid(n) for n in self.names()} | {self.supervisor_pid()}
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
