"""The operator as users install it, on the local cluster's real nodes: `helm install` of
charts/gaudi-operator with the image `hack/build-images.sh operator` builds, the chart's
ServiceAccount and RBAC, in-cluster configuration.

The local cluster has no pod network and no kube-proxy, so the release uses the chart's
values for that mode: `hostNetwork` (the pod IP is the node's loopback address and the
operator's listeners bind it) and `apiServer` (the in-cluster client dials the API server's
own loopback address, which its serving certificate covers, instead of the `kubernetes`
Service's ClusterIP, which routes nowhere here). Used by the takeover benchmark's
`--in-pods` mode and tests/cluster/realnodes/test_operator_in_cluster.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from gaudi_devtools.cluster import Cluster
from gaudi_devtools.cluster.nodes import REAL_LABEL

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "gaudi-operator"
IMAGE = "gaudi3.local/gaudi-operator"
TAG = "dev"
NAME = "app.kubernetes.io/name=gaudi-operator"


def image_archive() -> Path:
    cache = Path(os.environ.get("GAUDI3_CACHE", Path.home() / ".cache" / "gaudi3"))
    return cache / "images" / "gaudi-operator.tar"


def build_image() -> Path:
    """Build (or reuse: it is cached on its inputs) the operator image; its archive path."""
    out = subprocess.run(
        ["bash", str(ROOT / "hack" / "build-images.sh"), "operator"],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if out.returncode != 0:
        raise RuntimeError(f"hack/build-images.sh operator failed:\n{out.stderr[-3000:]}")
    return image_archive()


def values(c: Cluster, **overrides: Any) -> dict[str, Any]:
    """The chart's values for the local cluster's real nodes."""
    s = c.settings
    if s is None or not s.real_nodes:
        raise RuntimeError(
            f"cluster {c.name!r} has no real nodes (gaudi3 cluster up --real-nodes 2)"
        )
    v: dict[str, Any] = {
        "image": {"repository": IMAGE, "tag": TAG, "pullPolicy": "Never"},
        "hostNetwork": True,
        # The API server listens on 127.0.0.1 only; its certificate names 127.0.0.1.
        "apiServer": {"host": "127.0.0.1", "port": s.ports["kube-apiserver"]},
        # Real nodes only: kwok "runs" a pod without starting it. They carry the Gaudi taint.
        "nodeSelector": {REAL_LABEL: "true"},
        "tolerations": [{"key": "habana.ai/gaudi", "operator": "Exists", "effect": "NoSchedule"}],
        "prometheusURL": "",
        "logFormat": "plain",
    }
    v.update(overrides)
    return v


def helm(c: Cluster, *args: str, input: str | None = None) -> str:
    out = subprocess.run(
        [c.tool("helm"), "--kubeconfig", str(c.kubeconfig), *args],
        capture_output=True,
        text=True,
        input=input,
        timeout=300,
    )
    if out.returncode != 0:
        raise RuntimeError(f"helm {' '.join(args[:2])} failed: {out.stderr}")
    return out.stdout


def install(
    c: Cluster,
    release: str,
    namespace: str,
    vals: dict[str, Any],
    chart: str = str(CHART),
    *helm_args: str,
) -> None:
    """`helm upgrade --install` of the chart: the repository's folder, or a reference such
    as `oci://127.0.0.1:PORT/charts/gaudi-operator` with `--version`/`--plain-http`."""
    helm(
        c,
        "upgrade",
        "--install",
        release,
        chart,
        *helm_args,
        "-n",
        namespace,
        "--create-namespace",
        "-f",
        "-",
        input=json.dumps(vals),
    )


def uninstall(c: Cluster, release: str, namespace: str, wait: bool = False) -> None:
    helm(c, "uninstall", release, "-n", namespace, "--ignore-not-found", *(["--wait"] * wait))


def pods(c: Cluster, release: str, namespace: str) -> list[dict[str, Any]]:
    out = c.kubectl(
        "get",
        "pods",
        "-n",
        namespace,
        "-l",
        f"{NAME},app.kubernetes.io/instance={release}",
        "-o",
        "json",
    )
    return [
        p for p in json.loads(out.stdout)["items"] if not p["metadata"].get("deletionTimestamp")
    ]


def ready(pod: dict[str, Any]) -> bool:
    return any(
        x["type"] == "Ready" and x["status"] == "True"
        for x in pod.get("status", {}).get("conditions", [])
    )


def lease_holder(c: Cluster, namespace: str, lease: str) -> str:
    out = c.kubectl("get", "lease", lease, "-n", namespace, "-o", "json", check=False)
    if out.returncode != 0:
        return ""
    return str(json.loads(out.stdout).get("spec", {}).get("holderIdentity") or "")


def pod_of(identity: str) -> str:
    """The pod name in a Lease holder identity (`<pod>_<suffix>`, the chart's
    --leader-election-identity)."""
    return identity.rsplit("_", 1)[0]


def host_pid(c: Cluster, pod: dict[str, Any]) -> int:
    """The host PID of the pod's operator process, from its node's containerd."""
    cid = pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
    s = c.settings
    assert s is not None
    node = next(n for n in c.real_nodes.nodes(s) if n.name == pod["spec"]["nodeName"])
    out = subprocess.run(
        [c.tool("ctr"), "--address", str(node.socket), "-n", "k8s.io", "tasks", "ls"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    for line in out.stdout.splitlines()[1:]:
        task, pid, *_ = line.split()
        if task == cid:
            return int(pid)
    raise RuntimeError(f"no task {cid} on {node.name}")


def write_targets(c: Cluster, release: str, namespace: str, port: int) -> Path:
    """Register the release's pods with the cluster's Prometheus (its file_sd folder; the
    API server refuses loopback addresses in EndpointSlices, so a Service cannot list them):
    one target per pod, `<pod IP>:<port>`, labelled with the pod's namespace and name."""
    groups = [
        {
            "targets": [f"{p['status']['podIP']}:{port}"],
            "labels": {"namespace": namespace, "pod": p["metadata"]["name"]},
        }
        for p in pods(c, release, namespace)
        if p.get("status", {}).get("podIP")
    ]
    path = c.targets_dir / f"operator-{namespace}-{release}.json"
    c.targets_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(groups))
    tmp.rename(path)  # atomic: Prometheus never reads half a file
    return path
