"""Where the API server is and how to authenticate to it: the in-cluster service account,
or a kubeconfig file. One loader for the operator's own client (clients/kube.py) and
kopf's session (clients/kopf_session.py), so both talk to the same server as the same
user.

What is read, as client-go reads it: the server, its CA (file or data), `tls-server-name`,
`insecure-skip-tls-verify`, client certificates (files or data), a token (inline or
`tokenFile`), basic auth, and `exec` plugins that print a token (EKS's `aws eks
get-token`, GKE's `gke-gcloud-auth-plugin`, kubelogin). Not read: legacy `auth-provider`
sections, exec plugins that answer with a client certificate, and `proxy-url`.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import kopf
import yaml

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# A projected service-account token is rotated on disk (hourly by default); kubelet
# refreshes it well before expiry, so reading it again each minute is always in time.
TOKEN_FILE_REREAD_SECONDS = 60.0
# An exec plugin's token is fetched again this long before its stated expiry.
EXEC_MARGIN_SECONDS = 60.0


class ConfigError(Exception):
    """No usable credentials: no service account, no kubeconfig, or one we cannot read."""


@dataclass
class Token:
    """A bearer token that changes: re-read from a file (a rotated service-account token)
    or fetched from a kubeconfig's exec plugin. `expire()` after a 401 forces a new one."""

    file: Path | None = None
    exec_config: dict[str, Any] | None = None
    value: str | None = None
    expires: float = 0.0  # time.monotonic(); 0: fetch at first use
    expiry: datetime | None = None  # the plugin's own, for kopf's re-login
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    async def get(self) -> str | None:
        if self.value is not None and time.monotonic() < self.expires:
            return self.value
        async with self._lock:  # one plugin run for many requests at once
            if self.value is None or time.monotonic() >= self.expires:
                await self._fetch()
        return self.value

    def expire(self) -> None:
        self.expires = 0.0

    async def _fetch(self) -> None:
        if self.file is not None:
            self.value = self.file.read_text().strip() or None
            self.expires = time.monotonic() + TOKEN_FILE_REREAD_SECONDS
        elif self.exec_config is not None:
            self.value, self.expiry = await run_exec_plugin(self.exec_config)
            left = (self.expiry.timestamp() - time.time()) if self.expiry else float("inf")
            self.expires = time.monotonic() + max(0.0, left - EXEC_MARGIN_SECONDS)


@dataclass(frozen=True)
class Credentials:
    info: kopf.ConnectionInfo  # server, TLS, a static token or basic auth
    token: Token | None = None  # a token that changes (file, exec plugin)
    server_hostname: str | None = None  # kubeconfig's tls-server-name

    async def connection_info(self) -> kopf.ConnectionInfo:
        """For kopf's login: the current token, expiring when the plugin's does."""
        if self.token is None:
            return self.info
        token = await self.token.get()
        return replace(self.info, token=token, expiration=self.token.expiry)


def load(kubeconfig: str | None = None) -> Credentials:
    """The in-cluster service account when no kubeconfig is named and the process runs in
    a pod, else the kubeconfig (`kubeconfig`, else $KUBECONFIG, else ~/.kube/config)."""
    in_pod = os.environ.get("KUBERNETES_SERVICE_HOST") and (SERVICE_ACCOUNT / "token").exists()
    if kubeconfig is None and in_pod:
        return in_cluster()
    return from_kubeconfig(kubeconfig)


def in_cluster() -> Credentials:
    host = os.environ["KUBERNETES_SERVICE_HOST"]
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if ":" in host:  # IPv6
        host = f"[{host}]"
    token_file = SERVICE_ACCOUNT / "token"
    ca = SERVICE_ACCOUNT / "ca.crt"
    ns = SERVICE_ACCOUNT / "namespace"
    info = kopf.ConnectionInfo(
        server=f"https://{host}:{port}",
        ca_path=str(ca) if ca.exists() else None,
        default_namespace=ns.read_text().strip() if ns.exists() else None,
    )
    return Credentials(info, Token(file=token_file))


def from_kubeconfig(kubeconfig: str | None = None) -> Credentials:
    paths = _paths(kubeconfig)
    if not paths:
        raise ConfigError("no kubeconfig: pass one, set KUBECONFIG or create ~/.kube/config")
    current: str | None = None
    contexts: dict[str, Any] = {}
    clusters: dict[str, Any] = {}
    users: dict[str, Any] = {}
    for path in paths:  # merged as kubectl merges them: the first file to set a name wins
        config = yaml.safe_load(path.read_text()) or {}
        current = current or config.get("current-context")
        for table, key, into in (
            ("contexts", "context", contexts),
            ("clusters", "cluster", clusters),
            ("users", "user", users),
        ):
            for item in config.get(table) or []:
                into.setdefault(item["name"], _resolve(item.get(key) or {}, path.parent))
    if not current or current not in contexts:
        raise ConfigError(f"kubeconfig {os.pathsep.join(map(str, paths))}: no current context")
    context = contexts[current]
    try:
        cluster, user = clusters[context["cluster"]], users.get(context.get("user"), {})
    except KeyError as err:
        raise ConfigError(f"kubeconfig context {current}: no cluster {err}") from None
    token: Token | None = None
    if user.get("tokenFile"):
        token = Token(file=Path(user["tokenFile"]))
    elif user.get("exec"):
        token = Token(exec_config=user["exec"])
    info = kopf.ConnectionInfo(
        server=str(cluster["server"]).rstrip("/"),
        ca_path=cluster.get("certificate-authority"),
        ca_data=cluster.get("certificate-authority-data"),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        certificate_path=user.get("client-certificate"),
        certificate_data=user.get("client-certificate-data"),
        private_key_path=user.get("client-key"),
        private_key_data=user.get("client-key-data"),
        username=user.get("username"),
        password=user.get("password"),
        token=user.get("token"),
        default_namespace=context.get("namespace"),
    )
    return Credentials(info, token, cluster.get("tls-server-name"))


def _paths(kubeconfig: str | None) -> list[Path]:
    listed = kubeconfig or os.environ.get("KUBECONFIG") or ""
    paths = [Path(p).expanduser() for p in listed.split(os.pathsep) if p.strip()]
    if kubeconfig:
        return paths  # named: a missing file is an error (read_text says which)
    if paths:
        return [p for p in paths if p.exists()]
    default = Path("~/.kube/config").expanduser()
    return [default] if default.exists() else []


_FILE_KEYS = ("certificate-authority", "client-certificate", "client-key", "tokenFile")


def _resolve(section: dict[str, Any], base: Path) -> dict[str, Any]:
    """File names in a kubeconfig are relative to the kubeconfig's own folder."""
    out = dict(section)
    for key in _FILE_KEYS:
        if out.get(key):
            out[key] = str(base / Path(out[key]).expanduser())
    return out


async def run_exec_plugin(config: dict[str, Any]) -> tuple[str, datetime | None]:
    """The token an exec credential plugin prints (client.authentication.k8s.io)."""
    env = dict(os.environ)
    env.update({e["name"]: e["value"] for e in config.get("env") or []})
    env["KUBERNETES_EXEC_INFO"] = json.dumps(
        {
            "apiVersion": config.get("apiVersion", "client.authentication.k8s.io/v1"),
            "kind": "ExecCredential",
            "spec": {"interactive": False},
        }
    )
    proc = await asyncio.create_subprocess_exec(
        config["command"],
        *(config.get("args") or []),
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode:
        raise ConfigError(f"exec plugin {config['command']}: {err.decode(errors='replace')}")
    status = json.loads(out).get("status") or {}
    if not status.get("token"):
        raise ConfigError(
            f"exec plugin {config['command']}: "
            "no token (client certificates from a plugin are not supported)"
        )
    expiry = status.get("expirationTimestamp")
    return status["token"], datetime.fromisoformat(expiry) if expiry else None
