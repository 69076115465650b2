"""Shared by the cluster benchmarks: the operator as a child process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from gaudi_devtools.cluster.processes import free_port


def hpus_per_worker(value: int) -> int:
    """A typer callback: the cards per worker Intel supports, as the CRD's rule has them."""
    import typer

    from gaudi_operator.api import SUPPORTED_HPUS_PER_WORKER

    if value not in SUPPORTED_HPUS_PER_WORKER:
        raise typer.BadParameter(f"{value}: must be 1, 2, 4 or 8 (spec.hpusPerWorker)")
    return value


def start_operator(
    kubeconfig: Path,
    log: Path,
    *args: str,
    env: dict[str, str] | None = None,
    python_args: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """Start `gaudi3 operator` and return once its /healthz answers.

    `python_args` go between the interpreter and the operator module, e.g.
    `-m memray run -o FILE` to run it under a memory profiler (same process id)."""
    import httpx

    port = free_port()
    # One operator acts at once unless asked to campaign (no stale Lease to wait out).
    elect = [] if "--leader-elect" in args else ["--no-leader-elect"]
    local = ["--health-address", "127.0.0.1", "--metrics-address", "127.0.0.1"]
    # `-m` rather than the console script: the operator is the code on this interpreter's
    # path (PYTHONPATH included), so a source tree can measure its own operator.
    cmd = [
        sys.executable,
        *python_args,
        "-m",
        "gaudi_operator.cli.main",
        "operator",
        "--metrics-port",
        "0",
        "--health-port",
        str(port),
        *local,
    ]
    cmd += [*elect, *args]
    full_env = {**os.environ, "KUBECONFIG": str(kubeconfig), **(env or {})}
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, env=full_env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the operator exited; see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).is_success:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.terminate()
    raise RuntimeError(f"the operator did not become healthy; see {log}")


def peak_rss_mib(pid: int) -> float | None:
    """The process's peak resident memory (VmHWM), in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def rss_mib(pid: int) -> float | None:
    """The process's resident memory now (VmRSS), in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """CPU time the process has used so far (user + system): what the work cost, whatever
    else shares the machine."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
