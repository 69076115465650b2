"""Server ports are chosen below the kernel's ephemeral range, where no client's
outgoing connection can take them before the server binds, and none is handed out twice
before its server has bound it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from gaudi_devtools.cluster import processes
from gaudi_devtools.cluster.processes import _ephemeral_low, free_port


def test_free_ports_are_below_the_ephemeral_range_and_bindable() -> None:
    low = _ephemeral_low()
    if low < 1024 + 64:
        pytest.skip(f"ephemeral ports start at {low}: no room below them")
    for _ in range(20):
        port = free_port()
        assert 1024 <= port < low
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


@pytest.fixture
def ledger(tmp_path, monkeypatch):
    monkeypatch.setenv("GAUDI3_CACHE", str(tmp_path))
    return tmp_path / "server-ports.json"


def test_a_port_handed_out_is_not_handed_out_again_before_its_server_binds(
    ledger, monkeypatch
) -> None:
    # The random pick lands on the same port twice in a row (as in CI, where two of one
    # cluster's components, or two clusters starting at once, were given one port).
    picks = iter([20001, 20001, 20002])
    monkeypatch.setattr(processes.random, "randrange", lambda a, b: next(picks))
    monkeypatch.setattr(processes, "_ephemeral_low", lambda: 32768)
    monkeypatch.setattr(processes, "_bindable", lambda port: True)
    assert free_port() == 20001
    assert free_port() == 20002
    assert set(json.loads(ledger.read_text())) == {"20001", "20002"}


def test_the_ledger_is_shared_with_other_processes_and_forgets_old_ports(
    ledger, monkeypatch
) -> None:
    code = "from gaudi_devtools.cluster.processes import free_port; print(free_port())"
    env = {**os.environ, "GAUDI3_CACHE": str(ledger.parent)}
    other = int(
        subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        ).stdout
    )
    stale = {str(other + 1): time.time() - processes.PORT_HOLD_SECONDS - 1}
    ledger.write_text(json.dumps({**json.loads(ledger.read_text()), **stale}))
    picks = iter([other, other + 1])
    monkeypatch.setattr(processes.random, "randrange", lambda a, b: next(picks))
    monkeypatch.setattr(processes, "_bindable", lambda port: True)
    assert free_port() == other + 1  # the other process's port skipped, the stale one reused
    assert set(json.loads(ledger.read_text())) == {str(other), str(other + 1)}
