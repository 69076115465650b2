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

What the pods on a node hold is kept by `HpuLedger`, fed one pod at a time from a watch
(autoscaling/usage.py): a scale-up reads a number per node, and never walks the pods, so
its cost and the operator's memory do not grow with the pods already running.
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


def holding(pod: Obj) -> tuple[str, int] | None:
    """(node, HPUs) that a pod holds, or None: a pod holds its HPUs from the moment it is
    bound to a node until it has finished (Succeeded/Failed) or is gone; a pod being
    deleted still holds them, as the scheduler counts it."""
    node = (pod.get("spec") or {}).get("nodeName")
    if not node or (pod.get("status") or {}).get("phase") in _TERMINAL:
        return None
    hpus = pod_hpus(pod)
    return (node, hpus) if hpus > 0 else None


class HpuLedger:
    """HPUs held per node, kept current one pod event at a time.

    Memory is a (node, HPUs) pair per pod that holds HPUs and a count per node, never the
    pods themselves; a question costs a dictionary lookup, whatever runs in the cluster.
    """

    def __init__(self) -> None:
        self._pods: dict[str, tuple[str, int]] = {}  # pod uid -> (node, HPUs)
        self._used: dict[str, int] = {}  # node -> HPUs held

    def __len__(self) -> int:
        return len(self._pods)

    def used(self, node: str) -> int:
        return self._used.get(node, 0)

    def by_node(self) -> dict[str, int]:
        return dict(self._used)

    def replace(self, pods: Iterable[Obj]) -> None:
        """Start over from a full listing (the first list, or a relist after the watch
        lost its place)."""
        self._pods.clear()
        self._used.clear()
        for pod in pods:
            self.apply("ADDED", pod)

    def apply(self, event_type: str | None, pod: Obj) -> None:
        """One watch event: ADDED, MODIFIED or DELETED (others are ignored)."""
        uid = (pod.get("metadata") or {}).get("uid")
        if not uid or event_type not in ("ADDED", "MODIFIED", "DELETED"):
            return
        now = holding(pod) if event_type != "DELETED" else None
        before = self._pods.pop(uid, None)
        if before is not None:
            left = self._used[before[0]] - before[1]
            if left > 0:
                self._used[before[0]] = left
            else:
                del self._used[before[0]]
        if now is not None:
            self._pods[uid] = now
            self._used[now[0]] = self._used.get(now[0], 0) + now[1]


def node_room(node: Obj, used: int, pod_spec: Obj, excluded: Iterable[str] = ()) -> NodeRoom:
    """The room on one node whose pods hold `used` HPUs."""
    meta, spec = node.get("metadata") or {}, node.get("spec") or {}
    name = meta.get("name", "")
    allocatable = _int_quantity(
        ((node.get("status") or {}).get("allocatable") or {}).get(GAUDI_RESOURCE)
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
    nodes: Iterable[Obj],
    used: Mapping[str, int],
    pod_spec: Obj,
    excluded: Iterable[str] = (),
) -> list[NodeRoom]:
    """The room on every node, from the HPUs held per node (`HpuLedger.by_node`)."""
    ex = list(excluded)
    return [
        node_room(n, used.get((n.get("metadata") or {}).get("name", ""), 0), pod_spec, ex)
        for n in nodes
    ]


def used_by_node(pods: Iterable[Obj]) -> dict[str, int]:
    """HPUs held per node by these pods (a one-off count, where there is no watch)."""
    ledger = HpuLedger()
    ledger.replace(pods)
    return ledger.by_node()


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
