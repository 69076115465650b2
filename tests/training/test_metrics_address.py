"""The launcher's metrics endpoint listens where GAUDI3_METRICS_ADDRESS says."""

from __future__ import annotations

from pathlib import Path

import httpx

from gaudi_train.env import JobSettings
from gaudi_train.metrics import TrainingMetrics


def listening(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp writes them) with a listener on `port`."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
            found.add(addr)
    return found


def test_metrics_listen_on_the_configured_address_only() -> None:
    settings = JobSettings.from_env({"GAUDI3_METRICS_ADDRESS": "127.0.0.1"})
    m = TrainingMetrics("job", "ns", 0)
    port = m.serve(0, settings.metrics_address)
    assert port is not None
    assert listening(port) == {"0100007F"}  # 127.0.0.1, not 0.0.0.0
    assert "gaudi3_train_step" in httpx.get(f"http://127.0.0.1:{port}/metrics").text


def test_the_address_defaults_to_every_interface_for_pods() -> None:
    assert JobSettings.from_env({}).metrics_address == ""
