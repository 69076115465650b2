"""The local cluster's OCI registry: CNCF distribution's ``registry`` (v3), the registry
behind Docker Hub, GHCR and Harbor, run as one more supervised component
(``gaudi3 cluster up --registry``).

It listens on ``127.0.0.1:<port>`` only, in plain HTTP (loopback never leaves the
machine), and keeps its blobs in ``<cluster>/registry/data`` (a fresh store at every
``up``, like etcd). Tracing is off (``OTEL_TRACES_EXPORTER=none``: by default it exports
to ``localhost:4318``: distribution's docs/content/about/configuration.md); the access
log stays on, one line per request in ``logs/registry.log``, which the tests read to prove
that a node pulled.

The real nodes' containerd reaches it through a ``hosts.toml`` in its ``config_path``
(``<node>/certs.d/127.0.0.1:<port>/hosts.toml``): plain HTTP for that host, read at each
pull, so a registry started after the nodes is found too. See containerd's
docs/hosts.md (containerd 1.6: ``[plugins."io.containerd.grpc.v1.cri".registry]
config_path``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

COMPONENT = "registry"
# Telemetry stays on the machine: no exporter (the access log is enough here).
ENV = {"OTEL_TRACES_EXPORTER": "none"}


def address(ports: dict[str, int]) -> str:
    """``127.0.0.1:<port>``: how pushes, pulls and image names reach the registry."""
    return f"127.0.0.1:{ports[COMPONENT]}"


def config(port: int, root: Path) -> dict[str, Any]:
    """The registry's configuration (distribution's config-dev.yml, trimmed): filesystem
    storage under ``root``, deletes allowed, the HTTP listener on loopback only."""
    return {
        "version": "0.1",
        "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
        "storage": {
            "filesystem": {"rootdirectory": str(root / "data")},
            "delete": {"enabled": True},
            "cache": {"blobdescriptor": "inmemory"},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {
            "addr": f"127.0.0.1:{port}",
            "headers": {"X-Content-Type-Options": ["nosniff"]},
        },
        "health": {"storagedriver": {"enabled": True, "interval": "10s", "threshold": 3}},
    }


def write_config(port: int, root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "config.yml"
    path.write_text(yaml.safe_dump(config(port, root), sort_keys=False))
    return path


def argv(binary: str, config_file: Path) -> list[str]:
    return [binary, "serve", str(config_file)]


def hosts_toml(address: str) -> str:
    """containerd's host configuration for a plain-HTTP registry at ``address``
    (host:port): pull and resolve over http, TLS checks off should it ever be https."""
    return (
        f'server = "http://{address}"\n'
        "\n"
        f'[host."http://{address}"]\n'
        '  capabilities = ["pull", "resolve"]\n'
        "  skip_verify = true\n"
    )


def write_hosts(certs_d: Path, address: str) -> Path:
    """``certs_d/<host:port>/hosts.toml``: how one containerd reaches the registry."""
    path = certs_d / address / "hosts.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(hosts_toml(address))
    return path
