"""Simulated Intel Gaudi 3 nodes, shaped like what the Habana device plugin and feature
discovery advertise on a real 8-card server, so the scheduler sees the same constraints."""

from __future__ import annotations

import math
from typing import Any

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
POOL_LABEL = "gaudi3.scalestarter.dev/local-cluster"
REAL_LABEL = "gaudi3.scalestarter.dev/real-node"  # nodes run by a real kubelet
GAUDI_RESOURCE = "habana.ai/gaudi"
GAUDI_TAINT = {"key": "habana.ai/gaudi", "value": "present", "effect": "NoSchedule"}
# What Intel's network operator labels a node with once its Gaudi scale-out NICs are
# configured (intel/network-operator, cmd/discover/main.go); the operator's scale-out gate
# waits for it (gaudi_operator.api.SCALE_OUT_READY_LABEL). Every local Gaudi node has it, as
# on a cluster set up with that operator.
SCALE_OUT_LABEL = ("intel.feature.node.kubernetes.io/gaudi-scale-out", "true")
# What `gaudi3 cluster up --gaudi-nodes` accepts; node_ip has room for 64,000.
MAX_NODES = 10_000


def node_name(index: int) -> str:
    return f"gaudi3-node-{index}"


def lease_seconds(count: int) -> int:
    """The node Lease duration kwok gives ``count`` nodes. It renews each Lease every
    quarter of it, so Kubernetes' 40 s means 500 writes/s at 5,000 nodes, more than 2
    shared cores keep up with: above 500 nodes it grows to hold ~50 renewals/s."""
    return max(40, math.ceil(count * 4 / 50))


def monitor_grace_seconds(count: int, wanted: int) -> int:
    """kube-controller-manager's node-monitor grace: what was asked for, but never less
    than two Lease renewals, or healthy nodes would turn Unknown between renewals. Above
    Kubernetes' 40 s Lease (over 500 nodes) never less than the whole Lease, four
    renewals, as Kubernetes' own 50 s grace outlasts its renewals every 10 s: with two,
    kwok's renewals of 1,250 nodes fell behind a loaded API server, nodes turned NotReady,
    and the node lifecycle controller marked their pods not Ready for good (kwok does not
    mark them Ready again; docs/benchmarks.md, "A new job with thousands of pods")."""
    lease = lease_seconds(count)
    return max(wanted, math.ceil(lease / 2) if lease <= 40 else lease)


def monitor_period_seconds(count: int) -> int:
    # Each period walks every node; at thousands of nodes 1 s costs a core's tenth.
    return 1 if count <= 500 else 5


def node_ip(index: int) -> str:
    """A unique loopback address per node (never used to connect: kwok plays the node),
    so nothing in the cluster ever points outside 127.0.0.0/8."""
    if not 0 <= index < 256 * 250:
        raise ValueError(f"node index {index} out of range")
    return f"127.100.{index // 250}.{index % 250 + 2}"


def gaudi_node(name: str, hpus: int = 8, index: int = 0) -> dict[str, Any]:
    # A Gaudi 3 HLS server: 8 OAM cards, two Xeon sockets, 2 TiB of host memory.
    capacity = {
        "cpu": "224",
        "memory": "2Ti",
        "pods": "110",
        "ephemeral-storage": "7Ti",
        "hugepages-2Mi": "64Gi",
        GAUDI_RESOURCE: str(hpus),
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node.kubernetes.io/instance-type": "gaudi3-hls",
                "type": "kwok",
                POOL_LABEL: "true",
                # Labels in the style of Intel's Gaudi feature discovery.
                "habana.ai/device.family": "gaudi",
                "habana.ai/device.type": "gaudi3",
                "habana.ai/device.count": str(hpus),
                "habana.ai/gaudi.present": "true",
                SCALE_OUT_LABEL[0]: SCALE_OUT_LABEL[1],
            },
        },
        "spec": {"taints": [GAUDI_TAINT]},
        "status": {
            "capacity": capacity,
            "allocatable": dict(capacity),
            "addresses": [
                {"type": "InternalIP", "address": node_ip(index)},
                {"type": "Hostname", "address": name},
            ],
        },
    }
