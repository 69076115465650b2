"""How many more workers of a job the cluster can place now: pure, over API objects as dicts.

Before a scale-up the autoscaler caps the step to what fits, so it never asks for pods
that will sit Pending (the elastic PyTorchJob failure mode). A node counts when the job's
worker pod could land there by the rules the scheduler applies first:

- the node is Ready and not cordoned (spec.unschedulable);
- the pod tolerates the node's NoSchedule/NoExecute taints;
- the node matches the pod's nodeSelector and required node affinity (which also carries
  the job's excluded nodes, see pods.exclude_nodes), and is not in `excluded`;
- it has `hpusPerWorker` free `habana.ai/gaudi`: allocatable minus what the
  non-terminated pods bound to it request.

Only HPUs are counted: on a Gaudi server they are the scarce resource; CPU, memory and
huge pages are sized per HPU (pods.py), so a node with free HPUs has room for the rest.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gaudi_operator.api import GAUDI_RESOURCE

Obj = Mapping[str, Any]
_TERMINAL = ("Succeeded", "Failed")


@dataclass(frozen=True)
class NodeRoom:
    name: str
    free_hpus: int
    eligible: bool
    why_not: str = ""  # when not eligible


def _int_quantity(value: Any) -> int:
    # Extended resources are whole numbers; "8" or 8. Anything else counts as none.
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return 0


def node_ready(node: Obj) -> bool:
    for c in (node.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return c.get("status") == "True"
    return False


def _toleration_matches(tol: Obj, taint: Obj) -> bool:
    if tol.get("effect") and tol.get("effect") != taint.get("effect"):
        return False
    op = tol.get("operator") or "Equal"
    if not tol.get("key"):
        return op == "Exists"  # an empty key with Exists tolerates everything
    if tol.get("key") != taint.get("key"):
        return False
    return op == "Exists" or (tol.get("value") or "") == (taint.get("value") or "")


def tolerates(taints: Iterable[Obj], tolerations: Iterable[Obj]) -> bool:
    tols = list(tolerations)
    for taint in taints:
        if taint.get("effect") not in ("NoSchedule", "NoExecute"):
            continue  # PreferNoSchedule does not block
        if not any(_toleration_matches(t, taint) for t in tols):
            return False
    return True


def _expression_matches(expr: Obj, labels: Mapping[str, str]) -> bool:
    key, op, values = expr.get("key"), expr.get("operator"), list(expr.get("values") or [])
    present = key in labels
    if op == "In":
        return present and labels[key] in values
    if op == "NotIn":
        return not present or labels[key] not in values
    if op == "Exists":
        return present
    if op == "DoesNotExist":
        return not present
    if op in ("Gt", "Lt") and present and values:
        try:
            have, want = int(labels[key]), int(values[0])
        except ValueError:
            return False
        return have > want if op == "Gt" else have < want
    return False


def _term_matches(term: Obj, node: Obj) -> bool:
    labels = (node.get("metadata") or {}).get("labels") or {}
    fields = {"metadata.name": (node.get("metadata") or {}).get("name", "")}
    exprs, field_exprs = term.get("matchExpressions") or [], term.get("matchFields") or []
    if not exprs and not field_exprs:
        return False  # an empty term matches nothing (Kubernetes' rule)
    return all(_expression_matches(e, labels) for e in exprs) and all(
        _expression_matches(e, fields) for e in field_exprs
    )


def matches_placement(node: Obj, pod_spec: Obj) -> bool:
    """nodeSelector and required node affinity (terms are ORed)."""
    labels = (node.get("metadata") or {}).get("labels") or {}
    for k, v in (pod_spec.get("nodeSelector") or {}).items():
        if labels.get(k) != v:
            return False
    required = ((pod_spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    terms = required.get("nodeSelectorTerms") or []
    return not terms or any(_term_matches(t, node) for t in terms)


def pod_hpus(pod: Obj) -> int:
    spec = pod.get("spec") or {}

    def req(c: Obj) -> int:
        r = c.get("resources") or {}
        amount = (r.get("requests") or {}).get(GAUDI_RESOURCE)
        if amount is None:
            amount = (r.get("limits") or {}).get(GAUDI_RESOURCE)
        return _int_quantity(amount)

    main = sum(req(c) for c in spec.get("containers") or [])
    init = max((req(c) for c in spec.get("initContainers") or []), default=0)
    return max(main, init)


def node_room(
    node: Obj, pods_on_node: Iterable[Obj], pod_spec: Obj, excluded: Iterable[str] = ()
) -> NodeRoom:
    meta, spec = node.get("metadata") or {}, node.get("spec") or {}
    name = meta.get("name", "")
    allocatable = _int_quantity(
        ((node.get("status") or {}).get("allocatable") or {}).get(GAUDI_RESOURCE)
    )
    used = sum(
        pod_hpus(p) for p in pods_on_node if (p.get("status") or {}).get("phase") not in _TERMINAL
    )
    free = max(0, allocatable - used)
    why = ""
    if name in set(excluded):
        why = "excluded (failed this job before)"
    elif spec.get("unschedulable"):
        why = "cordoned"
    elif not node_ready(node):
        why = "not Ready"
    elif not tolerates(spec.get("taints") or [], pod_spec.get("tolerations") or []):
        why = "has a taint the workers do not tolerate"
    elif not matches_placement(node, pod_spec):
        why = "does not match the workers' nodeSelector/affinity"
    return NodeRoom(name=name, free_hpus=free, eligible=not why, why_not=why)


def cluster_room(
    nodes: Iterable[Obj], pods: Iterable[Obj], pod_spec: Obj, excluded: Iterable[str] = ()
) -> list[NodeRoom]:
    by_node: dict[str, list[Obj]] = {}
    for p in pods:
        n = (p.get("spec") or {}).get("nodeName")
        if n:
            by_node.setdefault(n, []).append(p)
    ex = list(excluded)
    return [
        node_room(n, by_node.get((n.get("metadata") or {}).get("name", ""), []), pod_spec, ex)
        for n in nodes
    ]


def schedulable_workers(
    rooms: Iterable[NodeRoom], hpus_per_worker: int, waiting_workers: int = 0
) -> int:
    """Workers of `hpus_per_worker` HPUs that fit on eligible nodes, minus the job's own
    workers still waiting for a node (they take the room first)."""
    fits = sum(r.free_hpus // hpus_per_worker for r in rooms if r.eligible)
    return max(0, fits - waiting_workers)


def summary(rooms: Iterable[NodeRoom], hpus_per_worker: int) -> str:
    """One line for events: which nodes have room, which do not and why."""
    parts = []
    for r in rooms:
        if r.eligible:
            parts.append(f"{r.name}: {r.free_hpus} free ({r.free_hpus // hpus_per_worker} fit)")
        else:
            parts.append(f"{r.name}: {r.why_not}")
    return "; ".join(parts)
