"""`kubectl gtj` as a user runs it: the cluster's own kubectl finds `kubectl-gtj` on PATH
(a two-line wrapper around this tree's plugin, as the `kubectl-gtj` console script is
around the installed one) and hands it the words after `gtj`."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parents[2]
_BIN: list[Path] = []


def _plugin_dir() -> Path:
    if not _BIN:
        d = Path(tempfile.mkdtemp(prefix="kubectl-gtj-test-"))
        atexit.register(shutil.rmtree, d, True)
        script = d / "kubectl-gtj"
        script.write_text(
            "#!/bin/sh\n"
            f'PYTHONPATH={ROOT / "kubectl-plugin"} exec {sys.executable} -m gaudi_kubectl "$@"\n'
        )
        script.chmod(0o755)
        _BIN.append(d)
    return _BIN[0]


def gtj(cluster: Any, *args: str, check: bool = True, timeout: float = 60) -> str:
    """`kubectl gtj ARGS --kubeconfig <the cluster's>`: its output (plain text: no
    terminal)."""
    kubectl = Path(cluster.tool("kubectl"))
    path = os.pathsep.join((str(_plugin_dir()), str(kubectl.parent), os.environ.get("PATH", "")))
    env = {**os.environ, "PATH": path}
    env.pop("KUBECONFIG", None)  # only the flag names the cluster
    out = subprocess.run(
        [str(kubectl), "gtj", *args, "--kubeconfig", str(cluster.kubeconfig)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and out.returncode != 0:
        raise AssertionError(f"kubectl gtj {' '.join(args)} exited {out.returncode}:\n{out.stderr}")
    return out.stdout
