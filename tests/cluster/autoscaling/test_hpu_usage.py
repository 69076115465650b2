"""The HPUs held per node, from one list and a watch of the real API server: a pod counts
once bound, stops counting when deleted, and pods without HPUs are not kept."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

pytestmark = pytest.mark.cluster

NODE = "gaudi3-node-3"


def _pod(name: str, hpus: int) -> dict[str, Any]:
    resources = {"limits": {"habana.ai/gaudi": str(hpus)}} if hpus else {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": NODE},
            "tolerations": [{"key": "habana.ai/gaudi", "operator": "Exists"}],
            "containers": [{"name": "c", "image": "busybox", "resources": resources}],
        },
    }


def test_usage_follows_pods_bound_and_deleted(cluster: Any, core: Any, namespace: str) -> None:
    from gaudi_operator.autoscaling.usage import HpuUsage
    from gaudi_operator.clients import kube

    async def scenario() -> None:
        clients = await kube.connect(str(cluster.kubeconfig))
        usage = HpuUsage(clients, lambda: [namespace])
        try:
            # Other tests' pods may hold HPUs on the node: count from what is there.
            t0 = time.monotonic()
            before = (await usage.used_by_node()).get(NODE, 0)
            assert time.monotonic() - t0 < 10  # one list, not a wait for the watch to end
            held = len(usage.ledger)

            async def until(want: int) -> None:
                deadline = time.monotonic() + 30
                while (got := (await usage.used_by_node()).get(NODE, 0)) != want:
                    assert time.monotonic() < deadline, f"{NODE}: {got} HPUs held, not {want}"
                    await asyncio.sleep(0.2)

            await asyncio.to_thread(core.create_namespaced_pod, namespace, _pod("one", 1))
            await asyncio.to_thread(core.create_namespaced_pod, namespace, _pod("cpu", 0))
            await until(before + 1)  # from the watch: no list after the first
            assert len(usage.ledger) == held + 1  # the CPU-only pod is not kept
            await asyncio.to_thread(
                core.delete_namespaced_pod, "one", namespace, grace_period_seconds=0
            )
            await until(before)
        finally:
            await usage.stop()
            await clients.close()

    asyncio.run(scenario())
