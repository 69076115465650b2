"""The cluster's supervisor: one long-lived process per cluster that keeps every
component started through ``Processes.start`` running.

``gaudi3 cluster up`` starts it detached (``supervisor.pid``) before any component;
``down`` stops it first. It launches each spec in ``specs/`` itself, so it is the
parent and sees the exit code; a component that exits is restarted from the same spec
after a backoff (see ``backoff.py``), and each restart is appended to
``restarts.jsonl`` (what ``gaudi3 cluster status`` counts) and noted in the
component's own log. A component already running when the supervisor starts (left by an
earlier supervisor) is adopted: watched through its pid, restarted when it is gone.

Run: ``python -m gaudi_devtools.cluster.supervisor <cluster folder>/``
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from gaudi_devtools.cluster.backoff import Backoff, RestartState
from gaudi_devtools.cluster.processes import Processes, Spec, is_zombie


@dataclass
class _Child:
    spec_id: str
    pid: int
    proc: subprocess.Popen[bytes] | None  # None when adopted: no exit code to read
    started: float
    restart: RestartState
    due: float | None = None  # when waiting out a backoff: the monotonic restart time
    restarts: int = 0

    def exit_code(self) -> int | str | None:
        """The exit code once it has exited, "unknown" for an adopted process, else None
        (still running)."""
        if self.proc is not None:
            return self.proc.poll()
        gone = not Path(f"/proc/{self.pid}").exists() or is_zombie(self.pid)
        return "unknown" if gone else None


@dataclass
class Supervisor:
    procs: Processes
    backoff: Backoff = field(default_factory=Backoff)
    poll_seconds: float = 0.25
    children: dict[str, _Child] = field(default_factory=dict)
    # Stopped components we still must reap (stop() kills them; we are their parent).
    retired: list[subprocess.Popen[bytes]] = field(default_factory=list)
    stopping: bool = False

    def run(self) -> None:
        def stop(_sig: int, _frame: FrameType | None) -> None:
            self.stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        self._say(f"supervising {self.procs.dir} (pid {os.getpid()})")
        first = True
        while not self.stopping and self._still_ours():
            self.step()
            if first:  # `up` waits for this: from now on every component is watched
                self.procs.supervisor_ready_file.write_text(f"{os.getpid()}\n")
                first = False
            time.sleep(self.poll_seconds)
        # Components keep running: `down` stops them; a new supervisor adopts them.
        self._say("supervisor stopping; components keep running")

    def _still_ours(self) -> bool:
        """Exit when the cluster folder is gone or another supervisor took over."""
        if not self.procs.dir.exists():
            return False
        try:
            return int(self.procs.supervisor_pid_file.read_text().split()[0]) == os.getpid()
        except (OSError, ValueError, IndexError):
            return True  # not written yet by whoever started us

    def step(self) -> None:
        self.retired = [p for p in self.retired if p.poll() is None]
        with self.procs.spec_lock():
            specs = self.procs.read_specs()
            now = time.monotonic()
            for name in [n for n in self.children if n not in specs]:
                self._retire(self.children.pop(name))  # stopped through Processes.stop
            for name, spec in specs.items():
                child = self.children.get(name)
                if child is None:
                    self._first_sight(spec, now)
                elif child.spec_id != spec.id:  # started anew: the new spec replaces it
                    self._retire(child, terminate=True)
                    self._launch(spec, now)
                elif child.due is not None:
                    if now >= child.due:
                        self._launch(spec, now, child)
                else:
                    code = child.exit_code()
                    if code is not None:
                        self._exited(name, child, code, now)

    def _first_sight(self, spec: Spec, now: float) -> None:
        pid = self.procs.pid(spec.name)
        if pid is not None and self.procs.start_id(spec.name) == spec.id:
            self._say(f"adopting {spec.name} (pid {pid})")
            self.children[spec.name] = _Child(spec.id, pid, None, now, RestartState(self.backoff))
        elif self.procs.recorded_start_id(spec.name) == spec.id:
            # It was started from this very spec and exited while nobody watched (between
            # two supervisors): a restart like any other, recorded as such.
            old = self.procs.recorded_pid(spec.name) or -1
            child = _Child(spec.id, old, None, now, RestartState(self.backoff))
            self.children[spec.name] = child
            self._exited(spec.name, child, "unknown", now)
        else:
            self._launch(spec, now)

    def _launch(self, spec: Spec, now: float, child: _Child | None = None) -> None:
        try:
            proc = self.procs.launch(spec)
        except OSError as e:  # e.g. the binary vanished: try again after the backoff
            self._say(f"cannot start {spec.name}: {e}")
            state = child.restart if child else RestartState(self.backoff)
            restarts = child.restarts if child else 0
            self.children[spec.name] = _Child(
                spec.id, -1, None, now, state, due=now + state.exited(0), restarts=restarts
            )
            return
        if child is None:
            fresh = RestartState(self.backoff)
            self.children[spec.name] = _Child(spec.id, proc.pid, proc, now, fresh)
        else:
            child.pid, child.proc, child.started, child.due = proc.pid, proc, now, None
            child.restarts += 1
            self._say(f"restarted {spec.name} (pid {proc.pid}, restart {child.restarts})")

    def _exited(self, name: str, child: _Child, code: int | str, now: float) -> None:
        delay = child.restart.exited(now - child.started)
        child.due = now + delay
        if child.proc is not None:
            child.proc = None  # reaped by poll()
        what = _describe(code)
        self._say(f"{name} (pid {child.pid}) {what}; restarting in {delay:g}s")
        record = {
            "component": name,
            "exit_code": code,
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "ran_seconds": round(now - child.started, 1),
            "restart_in_seconds": delay,
        }
        with self.procs.restart_log.open("a") as f:
            f.write(json.dumps(record) + "\n")
        with contextlib.suppress(OSError), (self.procs.logs / f"{name}.log").open("a") as log:
            log.write(f"[gaudi3 supervisor] {what}; restarting in {delay:g}s\n")

    def _retire(self, child: _Child, terminate: bool = False) -> None:
        if child.proc is None:
            return
        if terminate and child.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)
        self.retired.append(child.proc)

    @staticmethod
    def _say(message: str) -> None:
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        print(f"{stamp} {message}", flush=True)


def _describe(code: int | str) -> str:
    if isinstance(code, int) and code < 0:
        return f"was killed by signal {-code}"
    if isinstance(code, int):
        return f"exited with code {code}"
    return "exited (exit code unknown: adopted process)"


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m gaudi_devtools.cluster.supervisor <cluster folder>")
    Supervisor(Processes(Path(args[0].rstrip("/")))).run()


if __name__ == "__main__":
    main()
