"""Server ports are chosen below the kernel's ephemeral range, where no client's
outgoing connection can take them before the server binds."""

from __future__ import annotations

import socket

import pytest

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
