"""Fault injection through kwok's chaos stages (see devcluster/kwok-stages.yaml), and what
the API server's audit log says about a chaos run."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gaudi_devtools.cluster import audit

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


# --- the API server's record (its audit log: gaudi_devtools.cluster.audit) ------------------


def is_kwok(e: audit.Event) -> bool:
    return "kwok" in e.user_agent.lower()


def is_test(e: audit.Event) -> bool:
    return e.user_agent.startswith("OpenAPI-Generator/")  # the tests' own client (fail_pod)


def kwok_flakes(events: list[audit.Event], namespace: str) -> list[tuple[audit.Event, bool]]:
    """kwok's deletes that took a pod nobody had asked to delete: kwok deletes a pod only to
    finish a deletion someone else started, so a kwok DELETE that succeeds on a name whose
    last successful write was a create (no one else's DELETE since) took a new pod of the
    same name, late, in place of the one it was meant for. Each comes with whether the test
    had failed that pod: then it costs no restart of its own (the operator counts the
    failure, or the vanished pod in its place, once)."""
    state: dict[str, str] = {}
    flakes = []
    pods = [e for e in events if e.namespace == namespace and e.resource == "pods"]
    for e in sorted(pods, key=lambda e: e.completed):
        if e.code >= 300:
            continue
        if e.verb == "create":
            state[e.name] = "new"
        elif e.verb == "patch" and is_test(e) and state.get(e.name) == "new":
            state[e.name] = "failed"  # chaos.fail_pod's labels
        elif e.verb == "delete" and not is_kwok(e):
            state[e.name] = "deleting"
        elif e.verb == "delete" and state.get(e.name) in ("new", "failed"):
            flakes.append((e, state[e.name] == "failed"))
            state[e.name] = "gone"
    return flakes


def duplicate_creates(events: list[audit.Event], namespace: str) -> list[audit.Event]:
    """The operator's pod POSTs the API server refused as existing: a worker POSTed twice."""
    return [
        e
        for e in events
        if e.namespace == namespace
        and e.resource == "pods"
        and e.verb == "create"
        and e.code == 409
        and e.user_agent.startswith("gaudi-operator/")
    ]


@dataclass
class Pause:
    paused: str  # the deposed leader's User-Agent prefix
    standby: str  # the one that took over
    at: datetime


def fenced(events: list[audit.Event], lease: str, p: Pause) -> str | None:
    """None when the paused leader wrote nothing after the standby's takeover."""
    won = [
        e
        for e in events
        if e.user_agent.startswith(p.standby)
        and e.resource == "leases"
        and e.name == lease
        and e.code < 300
        and e.received >= p.at
    ]
    if not won:
        return f"no takeover by {p.standby} in the audit log"
    took = won[0].received
    late = [e for e in events if e.user_agent.startswith(p.paused) and e.received >= took]
    return "\n".join(map(str, late)) or None
