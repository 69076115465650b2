"""`kubectl gtj` as a user runs it: the cluster's own kubectl finds `kubectl-gtj` on PATH
(a two-line wrapper around this tree's plugin, as the `kubectl-gtj` console script is
around the installed one) and hands it the words after `gtj`."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
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


def _command(cluster: Any, args: tuple[str, ...]) -> tuple[list[str], dict[str, str]]:
    kubectl = Path(cluster.tool("kubectl"))
    path = os.pathsep.join((str(_plugin_dir()), str(kubectl.parent), os.environ.get("PATH", "")))
    env = {**os.environ, "PATH": path}
    env.pop("KUBECONFIG", None)  # only the flag names the cluster
    env.pop("COLUMNS", None)  # a CI runner's width would wrap the lines the tests read
    return [str(kubectl), "gtj", *args, "--kubeconfig", str(cluster.kubeconfig)], env


def gtj(cluster: Any, *args: str, check: bool = True, timeout: float = 60) -> str:
    """`kubectl gtj ARGS --kubeconfig <the cluster's>`: its output (plain text: no
    terminal)."""
    command, env = _command(cluster, args)
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"kubectl gtj {' '.join(args)} exited {out.returncode}:\n{out.stderr}")
    return out.stdout


def gtj_for(cluster: Any, seconds: float, *args: str) -> str:
    """Run `kubectl gtj ARGS` (a --watch) for `seconds`, then end it as a closed terminal
    would (SIGTERM); its output. It must exit 0, having cleaned up its proxy."""
    command, env = _command(cluster, args)
    with subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        time.sleep(seconds)
        proc.send_signal(signal.SIGTERM)  # kubectl passes it to the plugin it execs
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, f"kubectl gtj {' '.join(args)} exited {proc.returncode}:\n{err}"
    return out
