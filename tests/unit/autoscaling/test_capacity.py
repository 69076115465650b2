"""Free schedulable HPUs: only nodes the job's workers could use count."""

from __future__ import annotations

import itertools
from typing import Any

from gaudi_operator.api import GaudiTrainingJobSpec
from gaudi_operator.autoscaling import capacity
from gaudi_operator.jobs.manifests import JobRef, worker_pod_manifest

TAINT = {"key": "habana.ai/gaudi", "value": "present", "effect": "NoSchedule"}


def node(
    name: str,
    hpus: int = 8,
    ready: bool = True,
    labels: dict[str, str] | None = None,
    taints: list[dict[str, str]] | None = None,
    cordoned: bool = False,
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
        "spec": {"taints": [TAINT] if taints is None else taints, "unschedulable": cordoned},
        "status": {
            "allocatable": {"habana.ai/gaudi": str(hpus)},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


_uids = itertools.count()


def pod(
    node_name: str | None, hpus: int, phase: str = "Running", uid: str | None = None
) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "uid": uid or f"uid-{next(_uids)}"},
        "spec": {
            "nodeName": node_name,
            "containers": [{"resources": {"limits": {"habana.ai/gaudi": str(hpus)}}}],
        },
        "status": {"phase": phase},
    }


def worker_spec(
    template: dict[str, Any] | None = None, excluded: tuple[str, ...] = ()
) -> dict[str, Any]:
    spec = GaudiTrainingJobSpec.model_validate(
        {"image": "img", "hpusPerWorker": 4, "template": template or {}}
    )
    return worker_pod_manifest(spec, JobRef("j", "ns", "uid"), 0, 0, excluded)["spec"]


def fits(
    nodes: list[dict[str, Any]],
    pods: list[dict[str, Any]],
    pod_spec: dict[str, Any],
    excluded: tuple[str, ...] = (),
    waiting: int = 0,
) -> int:
    rooms = capacity.cluster_room(nodes, capacity.used_by_node(pods), pod_spec, excluded)
    return capacity.schedulable_workers(rooms, 4, waiting)


def test_free_hpus_subtract_running_pods_not_finished_ones() -> None:
    nodes = [node("a"), node("b")]
    pods = [pod("a", 4), pod("b", 8, phase="Succeeded"), pod(None, 4, phase="Pending")]
    assert fits(nodes, pods, worker_spec()) == 3  # a: 4 free -> 1, b: 8 free -> 2


def test_gaudi_taint_is_tolerated_other_taints_are_not() -> None:
    other = {"key": "dedicated", "value": "infer", "effect": "NoSchedule"}
    nodes = [node("a"), node("b", taints=[TAINT, other])]
    rooms = capacity.cluster_room(nodes, {}, worker_spec())
    assert [r.eligible for r in rooms] == [True, False]
    assert "taint" in rooms[1].why_not
    tol = {"tolerations": [{"key": "dedicated", "operator": "Exists"}]}
    assert fits(nodes, [], worker_spec({"spec": tol})) == 4


def test_node_selector_limits_nodes() -> None:
    nodes = [node("a", labels={"pool": "x"}), node("b", labels={"pool": "y"})]
    assert fits(nodes, [], worker_spec({"spec": {"nodeSelector": {"pool": "x"}}})) == 2


def test_cordoned_and_not_ready_nodes_do_not_count() -> None:
    nodes = [node("a"), node("b", cordoned=True), node("c", ready=False)]
    rooms = capacity.cluster_room(nodes, {}, worker_spec())
    assert [r.why_not for r in rooms] == ["", "cordoned", "not Ready"]
    assert capacity.schedulable_workers(rooms, 4) == 2


def test_excluded_nodes_do_not_count() -> None:
    nodes = [node("a"), node("b")]
    # Through the pod's affinity (pods.exclude_nodes) and through the explicit list.
    assert fits(nodes, [], worker_spec(excluded=("a",))) == 2
    assert fits(nodes, [], worker_spec(), excluded=("b",)) == 2


def test_required_affinity_in_operator() -> None:
    aff = {
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z1"]}]}
                    ]
                }
            }
        }
    }
    nodes = [node("a", labels={"zone": "z1"}), node("b", labels={"zone": "z2"}), node("c")]
    assert fits(nodes, [], worker_spec({"spec": aff})) == 2


def test_workers_already_waiting_take_the_room_first() -> None:
    assert fits([node("a")], [], worker_spec(), waiting=1) == 1
    assert fits([node("a")], [], worker_spec(), waiting=5) == 0


def test_partial_free_hpus_do_not_fit_a_worker() -> None:
    assert fits([node("a", hpus=8)], [pod("a", 5)], worker_spec()) == 0


# --- the ledger: HPUs held per node, one pod event at a time ---------------------------


def test_ledger_counts_a_pod_from_its_binding_to_its_end() -> None:
    ledger = capacity.HpuLedger()
    ledger.apply("ADDED", pod(None, 4, phase="Pending", uid="w"))
    assert ledger.by_node() == {}  # not bound yet: holds nothing
    ledger.apply("MODIFIED", pod("a", 4, phase="Pending", uid="w"))
    ledger.apply("ADDED", pod("a", 2, uid="x"))
    assert ledger.used("a") == 6
    ledger.apply("MODIFIED", pod("a", 4, uid="w"))  # Running: counted once, not twice
    assert ledger.used("a") == 6 and len(ledger) == 2
    ledger.apply("MODIFIED", pod("a", 4, phase="Succeeded", uid="w"))
    assert ledger.used("a") == 2
    ledger.apply("DELETED", pod("a", 2, uid="x"))
    assert ledger.by_node() == {} and len(ledger) == 0  # nothing left behind per node


def test_ledger_ignores_pods_without_hpus_and_unknown_deletes() -> None:
    ledger = capacity.HpuLedger()
    ledger.apply("ADDED", pod("a", 0, uid="cpu-only"))
    ledger.apply("DELETED", pod("b", 8, uid="never-seen"))
    ledger.apply("BOOKMARK", pod("a", 8, uid="y"))
    assert ledger.by_node() == {} and len(ledger) == 0


def test_ledger_replace_starts_over_from_a_listing() -> None:
    ledger = capacity.HpuLedger()
    ledger.apply("ADDED", pod("a", 8, uid="old"))
    ledger.replace([pod("b", 4, uid="new"), pod("b", 4, phase="Failed", uid="done")])
    assert ledger.by_node() == {"b": 4}


def test_room_from_the_ledger_matches_the_pods() -> None:
    pods = [pod("a", 4), pod("b", 8), pod("b", 8, phase="Failed")]
    ledger = capacity.HpuLedger()
    for p in pods:
        ledger.apply("ADDED", p)
    nodes = [node("a"), node("b")]
    rooms = capacity.cluster_room(nodes, ledger.by_node(), worker_spec())
    assert [r.free_hpus for r in rooms] == [4, 0]
    assert capacity.schedulable_workers(rooms, 4) == 1
