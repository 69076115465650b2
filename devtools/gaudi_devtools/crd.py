"""Where the CRD lives, and installing it on a cluster (demo and benchmarks)."""

from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path
from typing import Any

from gaudi_devtools.cluster import Cluster, ClusterError
from gaudi_operator.api import GROUP, PLURAL

_HERE = Path(__file__).resolve().parent


def crd_path() -> Path:
    """The CRD folder: crds/ of a source checkout, or the copy inside the operator's wheel."""
    wheel_copy = Path(str(resources.files("gaudi_operator"))) / "crds"
    for candidate in (_HERE.parents[1] / "crds", wheel_copy):
        if candidate.is_dir():
            return candidate
    raise ClusterError("cannot find the CRD folder crds/; run from a source checkout")


def established(crd: dict[str, Any]) -> bool:
    conditions = (crd.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)


def install_crds(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd_path()))
    # Polled: `kubectl wait` fails outright while a new CRD has no conditions at all yet.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if established(
            json.loads(cluster.kubectl("get", f"crd/{PLURAL}.{GROUP}", "-o", "json").stdout)
        ):
            return
        time.sleep(0.5)
    raise ClusterError(f"crd/{PLURAL}.{GROUP} was not established within 60 s")
