"""The launcher's control endpoint: the operator reads failures and posts decisions here.

HTTP/1.1 on the pod IP (`GAUDI3_CONTROL_ADDRESS`:`GAUDI3_CONTROL_PORT`), JSON bodies:

    GET  /healthz                         200 while the launcher lives (no token)
    GET  /readyz                          200 in states spare, running, succeeded; else 503
    GET  /status[?since=V&wait=S]         LauncherStatus; with `since`, answers once its
                                          version differs from V, or after S s (max 60)
    POST /decision                        Decision -> 202 taken, 200 already taken,
                                          409 older than the last one, 400 malformed

Everything but the probes needs `Authorization: Bearer <GAUDI3_CONTROL_TOKEN>` (401).
The messages are `gaudi_train.control_protocol`'s.
"""

from __future__ import annotations

import hmac
import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlparse

from gaudi_train.control_protocol import Decision, ProtocolError

log = logging.getLogger(__name__)

MAX_WAIT_SECONDS = 60.0
MAX_BODY = 64 * 1024


class ControlTarget(Protocol):
    """What the endpoint asks of the launcher (thread-safe)."""

    def status_json(self, since: int | None = None, wait: float = 0.0) -> dict[str, Any]: ...

    def ready(self) -> bool: ...

    def offer(self, decision: Decision) -> tuple[int, dict[str, Any]]: ...


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], target: ControlTarget, token: str) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)
        self.target = target
        self.token = token


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("control %s: " + format, self.client_address[0], *args)

    def _reply(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        given = self.headers.get("Authorization", "")
        expected = f"Bearer {self.server.token}"
        if hmac.compare_digest(given.encode(), expected.encode()):
            return True
        self._reply(401, {"error": "missing or wrong bearer token (GAUDI3_CONTROL_TOKEN)"})
        return False

    def do_GET(self) -> None:
        url = urlparse(self.path)
        target = self.server.target
        if url.path == "/healthz":
            self._reply(200, {"ok": True})
        elif url.path == "/readyz":
            ready = target.ready()
            self._reply(200 if ready else 503, {"ready": ready})
        elif url.path == "/status":
            if not self._authorized():
                return
            query = parse_qs(url.query)
            try:
                since = int(query["since"][0]) if "since" in query else None
                wait = min(float(query.get("wait", ["30"])[0]), MAX_WAIT_SECONDS)
            except ValueError:
                self._reply(400, {"error": "since: an integer; wait: seconds"})
                return
            self._reply(200, target.status_json(since, wait if since is not None else 0.0))
        else:
            self._reply(404, {"error": f"no such path: {url.path}"})

    def do_POST(self) -> None:
        url = urlparse(self.path)
        if url.path != "/decision":
            self._reply(404, {"error": f"no such path: {url.path}"})
            return
        if not self._authorized():
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._reply(413, {"error": "decision too large"})
            return
        try:
            decision = Decision.from_json(json.loads(self.rfile.read(length) or b"null"))
        except (ValueError, ProtocolError) as exc:
            self._reply(400, {"error": str(exc)})
            return
        code, body = self.server.target.offer(decision)
        self._reply(code, body)


class ControlServer:
    """The endpoint, served from daemon threads until `stop`."""

    def __init__(self, address: str, port: int, token: str, target: ControlTarget) -> None:
        self._server = _Server((address or "127.0.0.1", port), target, token)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
