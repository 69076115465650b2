"""Fault injection through kwok's chaos stages (see devcluster/kwok-stages.yaml)."""

from __future__ import annotations

from typing import Any

POD_FAILED = "pod-container-running-failed.stage.kwok.x-k8s.io"
POD_COMPLETE = "pod-complete.stage.kwok.x-k8s.io"
NODE_NOT_READY = "node-not-ready.stage.kwok.x-k8s.io"


def fail_pod(
    core: Any,
    namespace: str,
    pod: str,
    exit_code: int = 1,
    reason: str = "Error",
    message: str = "failure injected by the test",
    delay_ms: int = 0,
) -> None:
    """Make a Running pod's container terminate with ``exit_code``; the pod turns Failed."""
    core.patch_namespaced_pod(
        pod,
        namespace,
        {
            "metadata": {
                "labels": {POD_FAILED: "true"},
                "annotations": {
                    f"{POD_FAILED}/exit-code": str(exit_code),
                    f"{POD_FAILED}/reason": reason,
                    f"{POD_FAILED}/message": message,
                    f"{POD_FAILED}/delay": str(delay_ms),
                },
            }
        },
    )


def complete_pod(core: Any, namespace: str, pod: str, delay_ms: int = 0) -> None:
    """Make a Running pod's container exit 0; the pod turns Succeeded."""
    core.patch_namespaced_pod(
        pod,
        namespace,
        {
            "metadata": {
                "labels": {POD_COMPLETE: "true"},
                "annotations": {f"{POD_COMPLETE}/delay": str(delay_ms)},
            }
        },
    )


def node_not_ready(core: Any, node: str, reason: str = "KubeletDown") -> None:
    """Turn the node's Ready condition False (as if its kubelet reported a failure)."""
    core.patch_node(
        node,
        {
            "metadata": {
                "labels": {NODE_NOT_READY: "true"},
                "annotations": {f"{NODE_NOT_READY}/reason": reason},
            }
        },
    )


def node_ready(core: Any, node: str) -> None:
    """Undo node_not_ready: kwok initialises the node again and it turns Ready."""
    core.patch_node(node, {"metadata": {"labels": {NODE_NOT_READY: None}}})


def set_node_hpus(core: Any, node: str, allocatable: int) -> None:
    """Change the node's allocatable habana.ai/gaudi, as the device plugin does when a
    card turns unhealthy."""
    core.patch_node_status(node, {"status": {"allocatable": {"habana.ai/gaudi": str(allocatable)}}})


def resync_pod_readiness(core: Any, namespace: str) -> list[str]:
    """Do what a kubelet's status sync does and kwok does not: a running pod whose
    containers are ready, on a node that is Ready again, is marked Ready again (the node
    controller marked it NotReady while the node's heartbeats were late). Returns the pods
    it marked."""
    ready_nodes = {
        n.metadata.name
        for n in core.list_node().items
        if any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])
    }
    marked = []
    for pod in core.list_namespaced_pod(namespace).items:
        conds = {c.type: c.status for c in pod.status.conditions or []}
        if (
            pod.metadata.deletion_timestamp is None
            and pod.status.phase == "Running"
            and pod.spec.node_name in ready_nodes
            and conds.get("ContainersReady") == "True"
            and conds.get("Ready") == "False"
        ):
            body = {
                "status": {
                    "conditions": [{"type": "Ready", "status": "True"}],
                }
            }
            # Strategic merge: the conditions list merges by type, the others stay.
            core.patch_namespaced_pod_status(
                pod.metadata.name,
                namespace,
                body,
                _content_type="application/strategic-merge-patch+json",
            )
            marked.append(pod.metadata.name)
    return marked
