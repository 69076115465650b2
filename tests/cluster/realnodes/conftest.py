"""Real nodes: one small cluster (2 kwok + 2 real kubelet nodes on containerd + runc, and
the cluster's OCI registry, which costs a process and a fraction of a second) for the whole
package, since starting one costs seconds and importing images into its nodes tens of
seconds. The session's own cluster stays kwok-only.

`test_down.py` takes this cluster down, so it runs last (see the hook below).
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from conftest import wait_for

REAL = "gaudi3.scalestarter.dev/real-node"
ROOT = Path(__file__).resolve().parents[3]
IMAGE = "gaudi3.local/busybox:1"


def iptables() -> str:
    out = subprocess.run(["iptables-save"], capture_output=True, text=True, check=False)
    # Counters and the generation comment change on their own.
    return "\n".join(
        line.split(" [")[0] for line in out.stdout.splitlines() if not line.startswith("#")
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The down test ends the package's cluster: every other real-node test comes first.
    # Right after the package's last test, not at the session's end: the package-scoped
    # cluster would be gone by then and started again just to be taken down.
    here = Path(__file__).parent
    down = [i for i in items if i.path.parent == here and i.path.name == "test_down.py"]
    rest = [i for i in items if i not in down]
    ours = [n for n, i in enumerate(rest) if i.path.parent == here]
    at = ours[-1] + 1 if ours else len(rest)
    items[:] = rest[:at] + down + rest[at:]


def preloaded_images() -> list[str]:
    """The CPU training image and the operator image (each built if its inputs changed),
    for every real node to start with: unpacked once per image set, not imported into
    each node (~50 s and ~15 s). An image that does not build is left out; the test that
    needs it then reports the build's error."""
    from gaudi_devtools.cluster.cluster import CLUSTERS

    archives = []
    for target, name in (("training-cpu", "gaudi-train-cpu"), ("operator", "gaudi-operator")):
        build = subprocess.run(
            ["bash", str(ROOT / "hack" / "build-images.sh"), target],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        archive = CLUSTERS.parent / "images" / f"{name}.tar"
        if build.returncode == 0 and archive.exists():
            archives.append(str(archive))
    return archives


def training_image_on_nodes(c: Any) -> None:
    """The CPU training image on both real nodes (built if its inputs changed; imported if
    the nodes did not start with it) and the CRD applied: what a training module needs."""
    build = subprocess.run(
        ["bash", str(ROOT / "hack" / "build-images.sh"), "training-cpu"],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    archive = c.dir.parent.parent / "images" / "gaudi-train-cpu.tar"
    if str(archive) not in c.settings.real_node_images:
        assert len(c.real_nodes.import_image(archive)) == REAL_NODES
    crd = ROOT / "crds" / "gauditrainingjobs.yaml"
    c.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))


# Two for a job's workers and one for a warm spare (test_inplace.py): with host networking
# a node holds one pod of a job (they would share its IP and ports).
REAL_NODES = 3


@contextmanager
def training_operator(c: Any, log: str) -> Iterator[Any]:
    """The training image on the nodes and this tree's operator, logging to logs/`log`,
    for a module's tests; stopped at the end."""
    from cluster.gtj import OperatorProcess

    training_image_on_nodes(c)
    op = OperatorProcess(c.kubeconfig, c.dir / "logs" / log)
    op.start()
    try:
        yield op
    finally:
        op.stop()


@pytest.fixture(scope="package")
def real() -> Iterator[Any]:
    from gaudi_devtools.cluster import Cluster
    from gaudi_devtools.cluster.cluster import Settings

    before = iptables()
    c = Cluster(f"pytest-{os.getpid()}-real", say=lambda m: print(f"[real] {m}", flush=True))
    c.iptables_before = before  # type: ignore[attr-defined]
    c.up(
        Settings(
            gaudi_nodes=2,
            real_nodes=REAL_NODES,
            node_monitor_grace_seconds=20,
            real_node_images=preloaded_images(),
            registry=True,  # test_registry.py pulls from it
        )
    )
    try:
        yield c
    finally:
        c.delete()


def nodes(c: Any, selector: str) -> list[dict[str, Any]]:
    out = c.kubectl("get", "nodes", "-l", selector, "-o", "json")
    return list(json.loads(out.stdout)["items"])


def host_pod(
    name: str, node: str, command: str, env: list[dict[str, Any]] | None = None, **extra: Any
) -> dict[str, Any]:
    """A host-network pod pinned to `node`, running `command` in the busybox image."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "nodeName": node,
            "hostNetwork": True,
            "dnsPolicy": "ClusterFirstWithHostNet",
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 1,
            "tolerations": [{"key": "habana.ai/gaudi", "operator": "Exists"}],
            "containers": [
                {
                    "name": "main",
                    "image": IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["sh", "-c", command],
                    "env": env or [],
                }
            ],
            **extra,
        },
    }


@pytest.fixture
def ns(real: Any) -> Iterator[str]:
    name = f"real-{uuid.uuid4().hex[:6]}"
    real.kubectl("create", "namespace", name)
    wait_for(
        lambda: real.kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0,
        timeout=30,
        what="the default service account",
    )
    yield name
    real.kubectl("delete", "namespace", name, "--wait=false", check=False)
