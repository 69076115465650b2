"""`gaudi3 cluster up | status | env | down` as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gaudi_devtools.cluster import Cluster
from gaudi_devtools.cluster.processes import is_zombie

REPO = Path(__file__).resolve().parents[3]
# `gaudi3` as installed, but importing this checkout's code (the console script would
# run whichever tree the virtualenv was installed from).
GAUDI3 = [sys.executable, "-c", "from gaudi_operator.cli.main import main; main()"]
SOURCES = (REPO / "operator", REPO / "devtools", REPO / "training-image")
CHECKOUT = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, SOURCES))}


def gaudi3(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GAUDI3, *args], capture_output=True, text=True, timeout=180, env=CHECKOUT
    )


@pytest.fixture
def cli_cluster():
    name = "cli-test"
    yield Cluster(name)
    gaudi3("cluster", "down", "--name", name, "--delete")


def test_up_twice_status_env_and_down_leaves_no_process(cli_cluster: Cluster) -> None:
    name = cli_cluster.name
    first = gaudi3("cluster", "up", "--name", name, "--gaudi-nodes", "2")
    assert first.returncode == 0, first.stderr
    pids = {c: p for c, p in cli_cluster.running().items()}
    pids["supervisor"] = cli_cluster.procs.supervisor_pid()
    assert all(pids.values()), pids

    again = gaudi3("cluster", "up", "--name", name, "--gaudi-nodes", "2")
    assert again.returncode == 0 and "already up" in again.stderr
    assert {**cli_cluster.running(), "supervisor": cli_cluster.procs.supervisor_pid()} == pids

    status = gaudi3("cluster", "status", "--name", name)
    assert status.returncode == 0
    assert "gaudi3-node-1" in status.stdout and "restarts" in status.stdout

    env = gaudi3("cluster", "env", "--name", name)
    assert f"export KUBECONFIG={cli_cluster.kubeconfig}" in env.stdout
    nodes = json.loads(cli_cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    assert [n["status"]["allocatable"]["habana.ai/gaudi"] for n in nodes] == ["8", "8"]

    down = gaudi3("cluster", "down", "--name", name)
    assert down.returncode == 0
    # Exited processes may linger as zombies until init reaps them: those are gone too.
    assert not [p for p in pids.values() if Path(f"/proc/{p}").exists() and not is_zombie(p)]
    assert cli_cluster.procs.strays() == []
    assert gaudi3("cluster", "status", "--name", name).returncode == 1
