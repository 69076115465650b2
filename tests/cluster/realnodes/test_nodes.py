"""Real nodes beside the kwok nodes: capacity, real processes, DNS. (The operator image runs
in test_operator_in_cluster.py.)"""

from __future__ import annotations

import json
import socket
import ssl
import struct
from typing import Any

import httpx

from cluster.realnodes.conftest import REAL, REAL_NODES, host_pod, nodes
from conftest import wait_for


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
    reals = nodes(real, f"{REAL}=true")
    kwoks = nodes(real, f"gaudi3.scalestarter.dev/local-cluster=true,!{REAL}")
    assert len(reals) == REAL_NODES and len(kwoks) == 2
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


def test_pod_on_a_real_node_runs_a_real_process_with_exit_code_and_logs(real: Any, ns: str) -> None:
    node = nodes(real, f"{REAL}=true")[0]
    ip = node["status"]["addresses"][0]["address"]
    real.kubectl(
        "apply",
        "-n",
        ns,
        "-f",
        "-",
        input=json.dumps(
            # The process reports the node it was scheduled to and the cgroup it runs in.
            host_pod(
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
    node = nodes(real, f"{REAL}=true")[1]
    name, ip = node["metadata"]["name"], node["status"]["addresses"][0]["address"]
    fqdn = f"w-0.train.{ns}.svc.cluster.local"
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "train"},
        "spec": {"clusterIP": "None", "selector": {"app": "w-0"}, "ports": [{"port": 29500}]},
    }
    # The pod looks its own name up through the resolv.conf the kubelet wrote (CoreDNS).
    pod = host_pod(
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
