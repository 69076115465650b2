"""The embedded local cluster: a real control plane with kwok-simulated Gaudi 3 nodes.

Everything runs as plain processes on loopback ports, built from the official Go
modules by ``hack/toolchain.sh``; nothing needs Docker.
"""

from gaudi_devtools.cluster.cluster import Cluster, ClusterError

__all__ = ["Cluster", "ClusterError"]
