"""A small synchronous client of the launcher's control endpoint (urllib only).

The operator speaks the protocol with its own asynchronous client; this one serves the
tests' stand-in operator and the local recovery benchmark, and shows the calls:

    client = ControlClient("127.0.40.2", 29401, token)
    status = client.status()                      # LauncherStatus
    status = client.status(since=status.version, wait=10)   # long poll
    code, status = client.decide(Decision(3, RESTART, world_pods=2))
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from gaudi_train.control_protocol import Decision, LauncherStatus


class Unreachable(ConnectionError):
    """The launcher did not answer (its pod or process is gone)."""


@dataclass(frozen=True)
class ControlClient:
    host: str
    port: int
    token: str
    timeout: float = 5.0

    @property
    def base(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 0
    ) -> tuple[int, dict[str, Any]]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")
        except (urllib.error.URLError, OSError) as exc:
            raise Unreachable(f"{self.base}: {exc}") from exc

    def status(self, since: int | None = None, wait: float = 0.0) -> LauncherStatus:
        path = "/status" if since is None else f"/status?since={since}&wait={wait}"
        code, body = self._call("GET", path, timeout=self.timeout + wait)
        if code != 200:
            raise RuntimeError(f"GET {path}: {code} {body}")
        return LauncherStatus.from_json(body)

    def decide(self, decision: Decision) -> tuple[int, LauncherStatus | dict[str, Any]]:
        """POST the decision: (202 taken | 200 already taken, status) or (4xx, error)."""
        code, body = self._call("POST", "/decision", decision.to_json())
        if code in (200, 202, 409) and "state" in body:
            return code, LauncherStatus.from_json(body)
        return code, body

    def ready(self) -> bool:
        request = urllib.request.Request(self.base + "/readyz")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                return bool(resp.status == 200)
        except urllib.error.HTTPError:
            return False
        except (urllib.error.URLError, OSError) as exc:
            raise Unreachable(f"{self.base}: {exc}") from exc
