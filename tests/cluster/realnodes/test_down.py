"""`down` leaves no process, mount, cgroup, iptables rule or Node behind. Ends the package's
cluster, so it runs after every other real-node test (conftest.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cluster.realnodes.conftest import REAL, REAL_NODES, host_pod, iptables, nodes
from conftest import wait_for


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
    for n in nodes(real, f"{REAL}=true"):
        pod = host_pod(
            f"busy-{n['metadata']['name']}",
            n["metadata"]["name"],
            "sleep 3600",
            # A memory emptyDir: a tmpfs the kubelet mounts under its root (only for a
            # volume a container mounts).
            volumes=[{"name": "scratch", "emptyDir": {"medium": "Memory"}}],
        )
        pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "scratch", "mountPath": "/x"}]
        real.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(pod))

    def running() -> bool:
        pods = json.loads(real.kubectl("get", "pods", "-n", ns, "-o", "json").stdout)["items"]
        return len(pods) == REAL_NODES and all(p["status"].get("phase") == "Running" for p in pods)

    wait_for(running, timeout=90, interval=0.5, what="a running pod on each real node")
    # exec goes API server -> kubelet (client cert, webhook authz) -> containerd's stream.
    pod = f"busy-{nodes(real, f'{REAL}=true')[0]['metadata']['name']}"
    assert real.kubectl("exec", "-n", ns, pod, "--", "echo", "exec ok").stdout == "exec ok\n"
    cgroups = [
        Path("/sys/fs/cgroup/pids") / f"gaudi3-{real.name}-{n}"
        for n in (f"gaudi3-real-{i}" for i in range(REAL_NODES))
    ]
    assert all(d.is_dir() for d in cgroups)
    assert _mounts_under(real.dir / "nodes")
    # The kubelets' roots live in short folders (their sockets' paths are limited).
    kubelet_roots = [n.kubelet_root for n in real.real_nodes.nodes(real.settings)]
    assert len(kubelet_roots) == REAL_NODES and all(r.is_dir() for r in kubelet_roots)
    assert all(_mounts_under(r) for r in kubelet_roots)  # the pods' memory emptyDirs
    pids_before = _processes_naming(str(real.dir / "nodes"))
    assert pids_before

    # `gaudi3 cluster down` takes the real nodes down first, while the API server can
    # still delete their Node objects; do that step alone to see the API afterwards.
    real.real_nodes.down(api_up=True)
    assert nodes(real, f"{REAL}=true") == []
    assert len(nodes(real, "gaudi3.scalestarter.dev/local-cluster=true")) == 2  # kwok's stay
    real.down()

    assert _processes_naming(str(real.dir)) == []
    assert _mounts_under(real.dir) == []
    assert [r for r in kubelet_roots if r.exists() or _mounts_under(r)] == []
    assert [
        str(h / f"gaudi3-{real.name}-{n}")
        for h in Path("/sys/fs/cgroup").iterdir()
        for n in (f"gaudi3-real-{i}" for i in range(REAL_NODES))
        if (h / f"gaudi3-{real.name}-{n}").exists()
    ] == []
    assert iptables() == real.iptables_before
    logs = Path("/var/log/containers")
    links = [str(p) for p in logs.iterdir()] if logs.is_dir() else []
    assert [p for p in links if os.readlink(p).startswith(str(real.dir))] == []
