"""Helpers for GaudiTrainingJob cluster tests: the operator as a real process, and
short-hands for jobs, their pods and events."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from conftest import wait_for
from gaudi_devtools.cluster.processes import free_port

ROOT = Path(__file__).parents[2]
CRD = ROOT / "crds" / "gauditrainingjobs.yaml"
EXAMPLES = ROOT / "examples"
GROUP, VERSION, PLURAL = "gaudi.scalestarter.dev", "v1alpha1", "gauditrainingjobs"
MANAGED = "app.kubernetes.io/managed-by=gaudi-operator"


class OperatorProcess:
    """`gaudi3 operator` as a child process, with its log in a file."""

    def __init__(self, kubeconfig: Path, log: Path, *, leader_elect: bool = False) -> None:
        self.kubeconfig = kubeconfig
        self.log = log
        # One operator per test: no Lease to wait for after a SIGKILL unless a test asks.
        self.leader_elect = leader_elect
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_port = 0
        self.health_port = 0
        self.env: dict[str, str] = {}  # extra environment, e.g. GAUDI3_FAILPOINTS
        self.started_with: tuple[object, ...] = ()

    def command(self, extra: list[str]) -> list[str]:
        # This tree's operator (PYTHONPATH below), not whichever one the venv installed.
        return [
            sys.executable,
            "-m",
            "gaudi_operator.cli.main",
            "operator",
            "--metrics-port",
            str(self.metrics_port),
            "--health-port",
            str(self.health_port),
            "--health-address",
            "127.0.0.1",
            "--metrics-address",
            "127.0.0.1",
            "--resync-seconds",
            "5",
            "--leader-elect" if self.leader_elect else "--no-leader-elect",
            *extra,
        ]

    def start(self, *extra: str, wait: bool = True) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.metrics_port, self.health_port = free_port(), free_port()
        tree = os.pathsep.join(str(ROOT / d) for d in ("operator", "devtools", "training-image"))
        path = os.pathsep.join(p for p in (tree, os.environ.get("PYTHONPATH", "")) if p)
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PYTHONPATH": path, **self.env}
        with self.log.open("ab") as out:
            out.write(f"\n===== start {' '.join(extra)} =====\n".encode())
            self.proc = subprocess.Popen(
                self.command(list(extra)), env=env, stdout=out, stderr=subprocess.STDOUT
            )
        self.started_with = self.config(extra)
        if wait:
            wait_for(self.healthy, timeout=60, what="the operator's /healthz")

    def config(self, extra: tuple[str, ...]) -> tuple[object, ...]:
        """The arguments and the settings of the environment a start would use now."""
        env = {**os.environ, **self.env}
        mine = sorted(
            (k, v) for k, v in env.items() if k.startswith("GAUDI3_") or k == "PYTHONPATH"
        )
        return tuple(extra), tuple(mine)

    def ensure(self, *extra: str) -> None:
        """restart(*extra), unless it runs with exactly that already: modules that want the
        same operator (the autoscaling ones) then share one, and a restart costs seconds."""
        running = self.proc is not None and self.proc.poll() is None
        if not (running and self.started_with == self.config(extra)):
            self.restart(*extra)

    def healthy(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"the operator exited:\n{self.tail()}")
        try:
            return httpx.get(f"http://127.0.0.1:{self.health_port}/healthz", timeout=1).is_success
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        """SIGKILL: no clean-up, no goodbye (a node crash, an OOM kill)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()

    def restart(self, *extra: str) -> None:
        self.stop()
        self.start(*extra)

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text

    def tail(self, lines: int = 60) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def kubectl_run(cluster: Any, *args: str, input: str | None = None) -> str:
    out = subprocess.run(
        [cluster.tool("kubectl"), "--kubeconfig", str(cluster.kubeconfig), *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if out.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)}: {out.stderr}")
    return out.stdout


def load_example(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]


def get_job(custom: Any, ns: str, name: str) -> dict[str, Any]:
    return custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)


def create_job(custom: Any, ns: str, body: dict[str, Any]) -> dict[str, Any]:
    return custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)


def job_body(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "GaudiTrainingJob",
        "metadata": {"name": name},
        "spec": {"image": "ghcr.io/gaudi-scale-starter/gaudi-train:test", **spec},
    }


def worker_pods(core: Any, ns: str, job: str) -> list[Any]:
    sel = f"gaudi.scalestarter.dev/job-name={job}"
    return sorted(
        core.list_namespaced_pod(ns, label_selector=sel).items, key=lambda p: p.metadata.name
    )


def wait_phase(custom: Any, ns: str, name: str, phase: str, timeout: float = 60) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        job = get_job(custom, ns, name)
        return job if (job.get("status") or {}).get("phase") == phase else None

    return wait_for(check, timeout=timeout, what=f"{name} phase {phase}")  # type: ignore[return-value]


def wait_running_workers(core: Any, ns: str, job: str, n: int, timeout: float = 60) -> list[Any]:
    def check() -> list[Any] | None:
        pods = [p for p in worker_pods(core, ns, job) if not p.metadata.deletion_timestamp]
        running = [p for p in pods if p.status.phase == "Running"]
        return running if len(pods) == n and len(running) == n else None

    return wait_for(check, timeout=timeout, what=f"{n} running workers of {job}")  # type: ignore[return-value]


def events_for(core: Any, ns: str, name: str) -> list[Any]:
    return core.list_namespaced_event(ns, field_selector=f"involvedObject.name={name}").items


def wait_event(core: Any, ns: str, name: str, reason: str, timeout: float = 15) -> list[Any]:
    """The job's events with `reason`, once there is one: events are posted right after the
    status write a test usually waits for, so they can trail it by a moment."""

    def found() -> list[Any]:
        return [e for e in events_for(core, ns, name) if e.reason == reason]

    return wait_for(found, timeout=timeout, what=f"a {reason} event")  # type: ignore[return-value]


def wait_gone(check: Callable[[], object], timeout: float = 60, what: str = "deletion") -> None:
    wait_for(lambda: not check(), timeout=timeout, what=what)
