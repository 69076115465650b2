"""The launchers' control endpoints (failurePolicy.restartInPlace), over httpx.

The protocol is `gaudi_train.control_protocol` (pure, shared with the launcher) and
docs/training.md ("Recovery protocol: operator ↔ launcher"): `GET /status` (a long poll
with `since` and `wait`) and `POST /decision`, each with the job's bearer token. The token
is never logged; errors name the address only.
"""

from __future__ import annotations

from typing import Any

import httpx

from gaudi_train.control_protocol import Decision, LauncherStatus, ProtocolError

# A launcher answers a long poll after at most `wait` seconds (it caps it at 60).
LONG_POLL_SECONDS = 30.0
CONNECT_SECONDS = 2.0


class Unreachable(ConnectionError):
    """The launcher did not answer (its process or pod is gone, or not up yet)."""


class Refused(RuntimeError):
    """The launcher answered with an error (401: wrong token; 400/409: see `error`)."""

    def __init__(self, code: int, error: str) -> None:
        super().__init__(f"{code}: {error}")
        self.code = code
        self.error = error


def _base(ip: str, port: int) -> str:
    return f"http://[{ip}]:{port}" if ":" in ip else f"http://{ip}:{port}"


class LauncherClient:
    """One HTTP client for every launcher the operator talks to."""

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None) -> None:
        # Pod IPs are reached directly, never through a proxy from the environment.
        self._http = httpx.AsyncClient(
            trust_env=False,
            transport=transport,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(
        self,
        method: str,
        url: str,
        token: str,
        body: dict[str, Any] | None = None,
        read_seconds: float = 5.0,
    ) -> tuple[int, dict[str, Any]]:
        timeout = httpx.Timeout(read_seconds, connect=CONNECT_SECONDS)
        headers = {"Authorization": f"Bearer {token}"}
        try:
            resp = await self._http.request(
                method, url, json=body, headers=headers, timeout=timeout
            )
        except httpx.HTTPError as err:
            raise Unreachable(f"{url}: {type(err).__name__}") from None
        try:
            data = resp.json()
        except ValueError:
            data = {}
        return resp.status_code, data if isinstance(data, dict) else {}

    async def status(
        self, ip: str, port: int, token: str, since: int | None = None, wait: float = 0.0
    ) -> LauncherStatus:
        """The launcher's status; with `since`, as soon as its version differs (or `wait`)."""
        url = _base(ip, port) + "/status"
        if since is not None:
            url += f"?since={since}&wait={wait:g}"
        code, data = await self._call("GET", url, token, read_seconds=wait + 5.0)
        if code != 200:
            raise Refused(code, str(data.get("error") or ""))
        try:
            return LauncherStatus.from_json(data)
        except ProtocolError as err:
            raise Refused(code, f"unreadable status: {err}") from None

    async def decide(self, ip: str, port: int, token: str, decision: Decision) -> int:
        """POST the decision: 202 taken, 200 taken already, 409 refused (see the status)."""
        url = _base(ip, port) + "/decision"
        code, data = await self._call("POST", url, token, decision.to_json())
        if code in (400, 401):
            raise Refused(code, str(data.get("error") or ""))
        return code
