"""Real nodes: a kubelet on containerd + runc beside the kwok nodes, CoreDNS, and a `down`
that leaves nothing behind. Runs its own small cluster (the session's stays kwok-only)."""

from __future__ import annotations

import json
import os
import socket
import ssl
import struct
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import wait_for

REAL = "gaudi3.scalestarter.dev/real-node"
ROOT = Path(__file__).resolve().parents[3]
IMAGE = "gaudi3.local/busybox:1"


def _iptables() -> str:
    out = subprocess.run(["iptables-save"], capture_output=True, text=True, check=False)
    # Counters and the generation comment change on their own.
    return "\n".join(
        line.split(" [")[0] for line in out.stdout.splitlines() if not line.startswith("#")
    )


@pytest.fixture(scope="module")
def real() -> Iterator[Any]:
    from gaudi_devtools.cluster import Cluster
    from gaudi_devtools.cluster.cluster import Settings

    before = _iptables()
    c = Cluster(f"pytest-{os.getpid()}-real", say=lambda m: print(f"[real] {m}", flush=True))
    c.iptables_before = before  # type: ignore[attr-defined]
    c.up(Settings(gaudi_nodes=2, real_nodes=2, node_monitor_grace_seconds=20))
    try:
        yield c
    finally:
        c.delete()


def _nodes(c: Any, selector: str) -> list[dict[str, Any]]:
    out = c.kubectl("get", "nodes", "-l", selector, "-o", "json")
    return list(json.loads(out.stdout)["items"])


def _ready(node: dict[str, Any]) -> bool:
    return any(
        x["type"] == "Ready" and x["status"] == "True" for x in node["status"].get("conditions", [])
    )


def _dns_a(server: str, name: str) -> list[str]:
    """One A query over UDP, answered records' addresses (stdlib only)."""
    qid = 0x4242
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
    q += struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(q, (server, 53))
        data, _ = s.recvfrom(4096)
    rid, flags, _qd, an = struct.unpack(">HHHH", data[:8])
    assert rid == qid
    if flags & 0xF:  # rcode
        return []
    off = len(q)
    found = []
    for _ in range(an):
        off += 2 if data[off] & 0xC0 == 0xC0 else data.index(b"\0", off) - off + 1
        rtype, _cls, _ttl, rdlen = struct.unpack(">HHIH", data[off : off + 10])
        off += 10
        if rtype == 1:
            found.append(socket.inet_ntoa(data[off : off + rdlen]))
        off += rdlen
    return found


def test_real_nodes_are_ready_with_gaudi_capacity_next_to_kwok_nodes(real: Any) -> None:
    reals = _nodes(real, f"{REAL}=true")
    kwoks = _nodes(real, f"gaudi3.scalestarter.dev/local-cluster=true,!{REAL}")
    assert len(reals) == 2 and len(kwoks) == 2
    for n in reals:
        assert _ready(n), n["metadata"]["name"]
        assert n["status"]["allocatable"]["habana.ai/gaudi"] == "8"
        assert n["metadata"]["labels"]["habana.ai/device.type"] == "gaudi3"
        assert {"key": "habana.ai/gaudi", "value": "present", "effect": "NoSchedule"} in n["spec"][
            "taints"
        ]
        # A real kubelet, not kwok: it reports its own version and runtime.
        assert n["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
        [addr] = n["status"]["addresses"]
        assert addr["type"] == "InternalIP" and addr["address"].startswith("127.")
        # The kubelet serves with a cert from the cluster CA and refuses anonymous clients.
        port = n["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        r = httpx.get(
            f"https://{addr['address']}:{port}/pods",
            verify=ssl.create_default_context(cafile=str(real.pki / "ca.crt")),
            timeout=5,
        )
        assert r.status_code == 401


def _pod(
    name: str, node: str, command: str, env: list[dict[str, Any]] | None = None, **extra: Any
) -> dict[str, Any]:
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


def test_pod_on_a_real_node_runs_a_real_process_with_exit_code_and_logs(real: Any, ns: str) -> None:
    node = _nodes(real, f"{REAL}=true")[0]
    ip = node["status"]["addresses"][0]["address"]
    real.kubectl(
        "apply",
        "-n",
        ns,
        "-f",
        "-",
        input=json.dumps(
            # The process reports the node it was scheduled to and the cgroup it runs in.
            _pod(
                "hello",
                node["metadata"]["name"],
                "echo hello from $NODE; grep -om1 'gaudi3-real-[0-9]*/kubepods' "
                "/proc/self/cgroup; exit 7",
                env=[{"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
            )
        ),
    )

    def finished() -> dict[str, Any] | None:
        pod = json.loads(real.kubectl("get", "pod", "hello", "-n", ns, "-o", "json").stdout)
        return pod if pod["status"].get("phase") in ("Succeeded", "Failed") else None

    pod: Any = wait_for(finished, timeout=90, interval=0.5, what="the pod to finish")
    assert pod["status"]["phase"] == "Failed"
    term = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 7
    # Host network on the node's loopback address: the pod IP is the node's.
    assert pod["status"]["podIP"] == ip
    logs = real.kubectl("logs", "hello", "-n", ns).stdout
    name = node["metadata"]["name"]
    assert logs == f"hello from {name}\n{name}/kubepods\n"


def test_pod_dns_name_of_a_headless_service_resolves_to_the_node_address(
    real: Any, ns: str
) -> None:
    node = _nodes(real, f"{REAL}=true")[1]
    name, ip = node["metadata"]["name"], node["status"]["addresses"][0]["address"]
    fqdn = f"w-0.train.{ns}.svc.cluster.local"
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "train"},
        "spec": {"clusterIP": "None", "selector": {"app": "w-0"}, "ports": [{"port": 29500}]},
    }
    # The pod looks its own name up through the resolv.conf the kubelet wrote (CoreDNS).
    pod = _pod(
        "w-0",
        name,
        f"until nslookup {fqdn}; do sleep 0.5; done; sleep 3600",
        hostname="w-0",
        subdomain="train",
    )
    real.kubectl(
        "apply",
        "-n",
        ns,
        "-f",
        "-",
        input=json.dumps({"kind": "List", "apiVersion": "v1", "items": [svc, pod]}),
    )
    dns = real.settings.addresses["coredns"]
    wait_for(lambda: _dns_a(dns, fqdn) == [ip], timeout=60, interval=0.5, what=f"{fqdn} -> {ip}")

    def pod_resolved() -> bool:
        out = real.kubectl("logs", "w-0", "-n", ns, check=False).stdout
        return "Address" in out and ip in out

    wait_for(pod_resolved, timeout=60, interval=1, what="nslookup inside the pod")
    # Nothing outside the cluster is answered.
    assert _dns_a(dns, "example.com") == []


def test_operator_image_built_without_docker_runs_non_root_on_a_real_node(
    real: Any, ns: str
) -> None:
    # Cached: rebuilt only when the Dockerfile or the operator's sources change.
    build = subprocess.run(
        ["bash", str(ROOT / "hack" / "build-images.sh"), "operator"],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    archive = real.dir.parent.parent / "images" / "gaudi-operator.tar"
    node = _nodes(real, f"{REAL}=true")[0]["metadata"]["name"]
    assert node in real.real_nodes.import_image(archive)
    pod = _pod("op", node, "")
    pod["spec"]["securityContext"] = {"runAsNonRoot": True}
    pod["spec"]["containers"][0] = {
        "name": "operator",
        "image": "gaudi3.local/gaudi-operator:dev",
        "imagePullPolicy": "Never",
        "args": ["--help"],
        "securityContext": {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False},
    }
    real.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(pod))

    def finished() -> dict[str, Any] | None:
        got = json.loads(real.kubectl("get", "pod", "op", "-n", ns, "-o", "json").stdout)
        return got if got["status"].get("phase") in ("Succeeded", "Failed") else None

    done: Any = wait_for(finished, timeout=120, interval=0.5, what="the operator pod to finish")
    logs = real.kubectl("logs", "op", "-n", ns).stdout
    assert done["status"]["phase"] == "Succeeded", logs
    assert "gaudi3 operator" in logs and "--metrics-port" in logs


def _mounts_under(root: Path) -> list[str]:
    return [
        line.split()[1]
        for line in Path("/proc/mounts").read_text().splitlines()
        if line.split()[1].startswith(f"{root}/")
    ]


def _processes_naming(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                args = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in args and int(entry.name) != os.getpid():
                found.append(int(entry.name))
    return found


def test_down_leaves_no_process_mount_cgroup_iptables_rule_or_node(real: Any, ns: str) -> None:
    # Something running on each real node, so down has containers to clean up.
    for n in _nodes(real, f"{REAL}=true"):
        real.kubectl(
            "apply",
            "-n",
            ns,
            "-f",
            "-",
            input=json.dumps(
                _pod(f"busy-{n['metadata']['name']}", n["metadata"]["name"], "sleep 3600")
            ),
        )

    def running() -> bool:
        pods = json.loads(real.kubectl("get", "pods", "-n", ns, "-o", "json").stdout)["items"]
        return len(pods) == 2 and all(p["status"].get("phase") == "Running" for p in pods)

    wait_for(running, timeout=90, interval=0.5, what="a running pod on each real node")
    # exec goes API server -> kubelet (client cert, webhook authz) -> containerd's stream.
    pod = f"busy-{_nodes(real, f'{REAL}=true')[0]['metadata']['name']}"
    assert real.kubectl("exec", "-n", ns, pod, "--", "echo", "exec ok").stdout == "exec ok\n"
    cgroups = [
        Path("/sys/fs/cgroup/pids") / f"gaudi3-{real.name}-{n}"
        for n in ("gaudi3-real-0", "gaudi3-real-1")
    ]
    assert all(d.is_dir() for d in cgroups)
    assert _mounts_under(real.dir / "nodes")
    pids_before = _processes_naming(str(real.dir / "nodes"))
    assert pids_before

    # `gaudi3 cluster down` takes the real nodes down first, while the API server can
    # still delete their Node objects; do that step alone to see the API afterwards.
    real.real_nodes.down(api_up=True)
    assert _nodes(real, f"{REAL}=true") == []
    assert len(_nodes(real, "gaudi3.scalestarter.dev/local-cluster=true")) == 2  # kwok's stay
    real.down()

    assert _processes_naming(str(real.dir)) == []
    assert _mounts_under(real.dir) == []
    assert [
        str(h / f"gaudi3-{real.name}-{n}")
        for h in Path("/sys/fs/cgroup").iterdir()
        for n in ("gaudi3-real-0", "gaudi3-real-1")
        if (h / f"gaudi3-{real.name}-{n}").exists()
    ] == []
    assert _iptables() == real.iptables_before
    logs = Path("/var/log/containers")
    links = [str(p) for p in logs.iterdir()] if logs.is_dir() else []
    assert [p for p in links if os.readlink(p).startswith(str(real.dir))] == []
