"""The operator in the cluster as users install it: `helm install` of the chart with the image
built without Docker, two replicas on the two real nodes (the chart's defaults: leader
election on), non-root on a read-only root filesystem, the chart's ServiceAccount and RBAC,
in-cluster configuration. The leader reconciles a job onto the kwok nodes, the cluster's
Prometheus scrapes both replicas, and after the leader's process is SIGKILLed the standby
takes over and reconciles a new job.

The local cluster has no pod network and no kube-proxy: the release uses the chart's
`hostNetwork` and `apiServer` values (gaudi_devtools.operator_pods says why).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cluster.realnodes.conftest import REAL, nodes
from conftest import wait_for

RELEASE = "op"
UID = 10001  # the chart's podSecurityContext.runAsUser
METRICS_PORT, HEALTH_PORT = 9090, 8080


@pytest.fixture(scope="module")
def op_ns(real: Any) -> Iterator[str]:
    """The chart installed in its own namespace, watching only that namespace; both replicas
    Ready. Yields the namespace; uninstalled afterwards (other tests share the cluster)."""
    from gaudi_devtools import operator_pods
    from gaudi_devtools.crd import install_crds

    # Cached: rebuilt only when the Dockerfile or the operator's sources change. The nodes
    # normally start with it (conftest.py); if its build failed then, import it now.
    archive = operator_pods.build_image()
    if str(archive) not in real.settings.real_node_images:
        reals = {n["metadata"]["name"] for n in nodes(real, f"{REAL}=true")}
        assert set(real.real_nodes.import_image(archive)) == reals
    install_crds(real)
    ns = f"op-{uuid.uuid4().hex[:6]}"
    values = operator_pods.values(
        real,
        watchNamespaces=[ns],
        crds={"enabled": False},  # the package's other tests apply the CRD themselves
        # Shorter than the chart's 15 s lease, to keep the test quick (and valid: 3 + 2 x 1
        # < 6); `gaudi3 benchmark takeover --in-pods` measures the defaults.
        leaderElection={"enabled": True, "leaseDuration": 6, "renewDeadline": 3, "retryPeriod": 1},
    )
    operator_pods.install(real, RELEASE, ns, values)
    try:
        wait_for(
            lambda: (
                len([p for p in operator_pods.pods(real, RELEASE, ns) if operator_pods.ready(p)])
                == 2
            ),
            timeout=90,
            interval=0.5,
            what="both operator replicas Ready",
        )
        yield ns
    finally:
        operator_pods.uninstall(real, RELEASE, ns)
        (real.targets_dir / f"operator-{ns}-{RELEASE}.json").unlink(missing_ok=True)
        real.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def _pods(real: Any, ns: str) -> list[dict[str, Any]]:
    from gaudi_devtools import operator_pods

    return operator_pods.pods(real, RELEASE, ns)


def _tcp_listeners(pid: int) -> set[tuple[str, int]]:
    """(address, port) of the TCP sockets `pid` listens on (the node's network namespace is
    the host's, so /proc/<pid>/net/tcp lists everyone's: keep the process's own inodes)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[3] == "0A" and f[9] in inodes:  # LISTEN
            addr, port = f[1].split(":")
            found.add((socket.inet_ntoa(struct.pack("<I", int(addr, 16))), int(port, 16)))
    return found


def _metric(ip: str, name: str) -> float:
    text = httpx.get(f"http://{ip}:{METRICS_PORT}/metrics", timeout=5).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def _create_job(real: Any, ns: str, name: str) -> None:
    job = {
        "apiVersion": "gaudi.scalestarter.dev/v1alpha1",
        "kind": "GaudiTrainingJob",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "image": "gaudi3.local/gaudi-train:never-pulled",
            "hpusPerWorker": 1,
            # On a kwok node, where a pod "runs" without an image.
            "template": {
                "spec": {
                    "affinity": {
                        "nodeAffinity": {
                            "requiredDuringSchedulingIgnoredDuringExecution": {
                                "nodeSelectorTerms": [
                                    {
                                        "matchExpressions": [
                                            {"key": REAL, "operator": "DoesNotExist"}
                                        ]
                                    }
                                ]
                            }
                        }
                    }
                }
            },
        },
    }
    real.kubectl("apply", "-f", "-", input=json.dumps(job))


def _wait_running_on_kwok(real: Any, ns: str, name: str) -> None:
    def running() -> bool:
        job = json.loads(real.kubectl("get", "gtj", name, "-n", ns, "-o", "json").stdout)
        if (job.get("status") or {}).get("phase") != "Running":
            return False
        sel = f"gaudi.scalestarter.dev/job-name={name}"
        pods = json.loads(real.kubectl("get", "pods", "-n", ns, "-l", sel, "-o", "json").stdout)
        return all(
            not p["spec"]["nodeName"].startswith("gaudi3-real-")
            and p["status"].get("phase") == "Running"
            for p in pods["items"]
        ) and bool(pods["items"])

    wait_for(running, timeout=60, interval=0.5, what=f"{name} Running on a kwok node")


def _leader(real: Any, ns: str) -> dict[str, Any]:
    from gaudi_devtools import operator_pods

    holder = wait_for(
        lambda: operator_pods.lease_holder(real, ns, f"{RELEASE}-gaudi-operator"),
        timeout=30,
        what="a lease holder",
    )
    name = operator_pods.pod_of(str(holder))
    return next(p for p in _pods(real, ns) if p["metadata"]["name"] == name)


def test_chart_runs_two_replicas_on_the_real_nodes_non_root_read_only_on_the_pod_ip(
    real: Any, op_ns: str
) -> None:
    from gaudi_devtools import operator_pods

    pods = _pods(real, op_ns)
    # One replica per real node: host ports keep them apart.
    placed = [p["spec"]["nodeName"] for p in pods]
    assert len(set(placed)) == 2 and all(n.startswith("gaudi3-real-") for n in placed), placed
    for pod in pods:
        ip = pod["status"]["podIP"]
        assert pod["spec"]["hostNetwork"] and ip.startswith("127.0.20.")
        assert pod["spec"]["serviceAccountName"] == f"{RELEASE}-gaudi-operator"
        pid = operator_pods.host_pid(real, pod)
        # The running process, not just the spec: uid 10001, root filesystem mounted ro.
        status = Path(f"/proc/{pid}/status").read_text()
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        assert uids == [str(UID)] * 4
        root = next(
            line.split()
            for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
            if line.split()[4] == "/"
        )
        assert "ro" in root[5].split(","), root
        # /metrics and /healthz listen on the pod IP only, never 0.0.0.0.
        assert _tcp_listeners(pid) == {(ip, METRICS_PORT), (ip, HEALTH_PORT)}
        # The kubelet's probes pass against the pod IP (Ready above), and so does ours.
        assert httpx.get(f"http://{ip}:{HEALTH_PORT}/healthz", timeout=5).status_code == 200
    # In-cluster configuration: the container env names the loopback API server, not the
    # `kubernetes` Service's ClusterIP that the kubelet puts there.
    env = {e["name"]: e.get("value") for e in pods[0]["spec"]["containers"][0]["env"]}
    assert env["KUBERNETES_SERVICE_HOST"] == "127.0.0.1"
    assert env["KUBERNETES_SERVICE_PORT"] == str(real.settings.ports["kube-apiserver"])


def test_the_leader_reconciles_a_job_and_prometheus_scrapes_both_replicas(
    real: Any, op_ns: str
) -> None:
    from gaudi_devtools import operator_pods

    leader = _leader(real, op_ns)
    _create_job(real, op_ns, "first")
    _wait_running_on_kwok(real, op_ns, "first")
    by_ip = {p["status"]["podIP"]: p["metadata"]["name"] for p in _pods(real, op_ns)}
    # Only the leader acted: it created the worker, the standby created nothing.
    created = {by_ip[ip]: _metric(ip, "gaudi_operator_pods_created_total") for ip in by_ip}
    assert created[leader["metadata"]["name"]] >= 1
    assert [n for n, v in created.items() if v] == [leader["metadata"]["name"]]

    operator_pods.write_targets(real, RELEASE, op_ns, METRICS_PORT)

    def scraped() -> dict[str, tuple[float, float]] | None:
        found: dict[str, list[float]] = {}
        for query in (
            f'up{{namespace="{op_ns}"}}',
            f'gaudi_operator_leader{{namespace="{op_ns}"}}',
        ):
            r = httpx.get(f"{real.prometheus_url}/api/v1/query", params={"query": query}, timeout=5)
            for s in r.json()["data"]["result"]:
                found.setdefault(s["metric"]["pod"], []).append(float(s["value"][1]))
        done = {pod: (v[0], v[1]) for pod, v in found.items() if len(v) == 2}
        return done if len(done) == 2 else None

    try:
        seen: Any = wait_for(scraped, timeout=30, interval=0.5, what="both replicas scraped")
    except AssertionError:
        targets = httpx.get(f"{real.prometheus_url}/api/v1/targets", timeout=5).json()
        raise AssertionError(
            [t for t in targets["data"]["activeTargets"] if t["labels"].get("namespace") == op_ns]
        ) from None
    # up == 1 for both; gaudi_operator_leader says which one leads.
    assert seen == {
        name: (1.0, 1.0 if name == leader["metadata"]["name"] else 0.0) for name in by_ip.values()
    }


def test_the_standby_takes_over_after_the_leader_is_sigkilled_and_reconciles_a_new_job(
    real: Any, op_ns: str
) -> None:
    from gaudi_devtools import operator_pods

    leader = _leader(real, op_ns)
    standby = next(
        p for p in _pods(real, op_ns) if p["metadata"]["name"] != leader["metadata"]["name"]
    )
    os.kill(operator_pods.host_pid(real, leader), signal.SIGKILL)
    _create_job(real, op_ns, "second")
    _wait_running_on_kwok(real, op_ns, "second")
    assert _leader(real, op_ns)["metadata"]["name"] == standby["metadata"]["name"]
    assert _metric(standby["status"]["podIP"], "gaudi_operator_pods_created_total") >= 1
    assert _metric(standby["status"]["podIP"], "gaudi_operator_leader") == 1
    # The kubelet restarts the killed container, which campaigns again as the standby.

    def restarted() -> bool:
        name = leader["metadata"]["name"]
        pod = next(p for p in _pods(real, op_ns) if p["metadata"]["name"] == name)
        status = pod["status"]["containerStatuses"][0]
        return status["restartCount"] >= 1 and "running" in status["state"]

    wait_for(restarted, timeout=60, interval=0.5, what="the killed replica restarted")
