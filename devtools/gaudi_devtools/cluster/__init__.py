"""The embedded local cluster: a real control plane with kwok-simulated Gaudi 3 nodes.

Everything runs as plain processes on loopback ports, built from the official Go
modules by ``hack/toolchain.sh``; nothing needs Docker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gaudi_devtools.cluster.cluster import Cluster, ClusterError

__all__ = ["Cluster", "ClusterError"]


def __getattr__(name: str) -> Any:
    # Lazy, so the per-cluster supervisor (a submodule) starts without httpx and yaml.
    if name in __all__:
        from gaudi_devtools.cluster import cluster

        return getattr(cluster, name)
    raise AttributeError(name)
