"""Where the CRD lives, and installing it on a cluster (demo and benchmarks)."""

from __future__ import annotations

from pathlib import Path

from gaudi_operator.api import GROUP, PLURAL
from gaudi_operator.devcluster import Cluster, ClusterError

_HERE = Path(__file__).resolve().parent


def crd_path() -> Path:
    """The CRD folder: crds/ of a source checkout, or the copy inside the installed wheel."""
    for candidate in (_HERE.parents[1] / "crds", _HERE / "crds"):
        if candidate.is_dir():
            return candidate
    raise ClusterError("cannot find the CRD folder crds/; run from a source checkout")


def install_crds(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd_path()))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{PLURAL}.{GROUP}")
