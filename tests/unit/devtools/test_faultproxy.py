"""The loopback fault proxy: forwards, delays, or drops what one client sends, on
connections already open as on new ones; and the audit log's lines parsed as the API
server writes them."""

from __future__ import annotations

import json
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gaudi_devtools.cluster import audit
from gaudi_devtools.cluster.faultproxy import FaultProxy

pytestmark = pytest.mark.unit


class Echo(socketserver.BaseRequestHandler):
    received: list[bytes] = []

    def handle(self) -> None:
        while data := self.request.recv(1024):
            Echo.received.append(data)
            self.request.sendall(data)


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    Echo.received = []
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with FaultProxy("127.0.0.1", server.server_address[1]) as p:
        yield p
    server.shutdown()
    server.server_close()


def roundtrip(conn: socket.socket, data: bytes, timeout: float = 2.0) -> bytes:
    conn.settimeout(timeout)
    conn.sendall(data)
    try:
        return conn.recv(1024)
    except TimeoutError:
        return b""


def test_it_forwards_then_drops_on_open_and_new_connections(proxy: FaultProxy) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port)) as conn:
        assert roundtrip(conn, b"renew") == b"renew"
        proxy.set_mode("drop")
        assert roundtrip(conn, b"renew again", timeout=0.5) == b""
        with socket.create_connection(("127.0.0.1", proxy.port)) as fresh:
            assert roundtrip(fresh, b"hello?", timeout=0.5) == b""
    assert Echo.received == [b"renew"]  # nothing dropped ever reached the server
    assert proxy.dropped == len(b"renew again") + len(b"hello?")


def test_it_delays_each_chunk(proxy: FaultProxy) -> None:
    proxy.set_mode("delay", delay=0.3)
    with socket.create_connection(("127.0.0.1", proxy.port)) as conn:
        start = time.monotonic()
        assert roundtrip(conn, b"slow") == b"slow"
        assert time.monotonic() - start >= 0.6  # there and back


def test_audit_lines_are_read_as_the_api_server_writes_them(tmp_path: Path) -> None:
    line = {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "stage": "ResponseComplete",
        "verb": "update",
        "user": {"username": "system:serviceaccount:ns:op"},
        "userAgent": "gaudi-operator/op-a_1234abcd (lease)",
        "objectRef": {"resource": "leases", "namespace": "ns", "name": "gaudi-operator"},
        "responseStatus": {"metadata": {}, "code": 409},
        "requestReceivedTimestamp": "2025-01-02T03:04:05.123456Z",
        "stageTimestamp": "2025-01-02T03:04:05.130001Z",
    }
    status = {**line, "verb": "patch", "objectRef": {**line["objectRef"], "subresource": "status"}}
    log = tmp_path / "audit.log"
    (tmp_path / "audit-2025-01-01T00-00-00.000.log").write_text(json.dumps(status) + "\n")
    log.write_text(json.dumps(line) + "\n" + '{"cut by a rotation')
    first, second = audit.read(log)
    assert first.resource == "leases/status" and first.verb == "patch"
    assert second.code == 409 and second.user_agent.startswith("gaudi-operator/op-a_1234abcd ")
    assert second.received == datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    assert audit.flags(tmp_path / "p.yaml", log)[1] == f"--audit-log-path={log}"
    assert {"level": "Metadata", "verbs": audit.WRITE_VERBS} in audit.POLICY["rules"]
