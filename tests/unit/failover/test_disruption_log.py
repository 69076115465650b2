"""Vanished worker pods are failures of the job incarnation that owned them, only."""

from __future__ import annotations

from typing import Any

from gaudi_operator.api import LABEL_GENERATION, LABEL_JOB_NAME, LABEL_WORKER_INDEX
from gaudi_operator.failover.signals import DisruptionLog


def worker(name: str, index: int, owner_uid: str, uid: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": uid,
            "labels": {
                LABEL_JOB_NAME: "train",
                LABEL_WORKER_INDEX: str(index),
                LABEL_GENERATION: "0",
            },
            "ownerReferences": [
                {"kind": "GaudiTrainingJob", "name": "train", "uid": owner_uid, "controller": True}
            ],
        },
        "spec": {"nodeName": "gaudi3-node-0", "containers": [{"name": "worker"}]},
        "status": {"phase": "Running"},
    }


def test_deleted_worker_is_pending_for_its_own_job() -> None:
    log = DisruptionLog()
    assert log.pod_deleted(worker("train-worker-1", 1, "job-a", "p1")) is not None
    pending = log.pending("ns", "train", "job-a", 0, 2, ["train-worker-0"])
    assert [f.pod for f in pending] == ["train-worker-1"]


def test_pods_of_a_deleted_job_with_the_same_name_are_not_failures_of_the_new_one() -> None:
    log = DisruptionLog()
    # The old job is deleted; the garbage collector removes its pods ...
    log.pod_deleted(worker("train-worker-0", 0, "job-old", "p0"))
    log.pod_deleted(worker("train-worker-1", 1, "job-old", "p1"))
    # ... and a new job of the same name must not see them as evictions.
    assert log.pending("ns", "train", "job-new", 0, 2, []) == []


def test_the_operators_own_deletions_are_not_disruptions() -> None:
    log = DisruptionLog()
    log.deleting(["p1"])
    assert log.pod_deleted(worker("train-worker-1", 1, "job-a", "p1")) is None


def test_the_node_cache_forgets_deleted_nodes_after_a_while(monkeypatch: Any) -> None:
    from gaudi_operator.failover import signals

    clock = [1000.0]
    monkeypatch.setattr(signals.time, "monotonic", lambda: clock[0])
    cache = signals.NodeCache()
    for i in range(50):
        cache.update("DELETED", {"metadata": {"name": f"n{i}"}})
    assert cache.lookup(["n0"])["n0"].exists is False  # known gone: its workers are lost
    clock[0] += signals.DELETED_NODE_TTL + 1
    cache.update("DELETED", {"metadata": {"name": "last"}})
    assert set(cache.lookup([f"n{i}" for i in range(50)])) == set()  # bounded, not growing


def test_a_handled_job_leaves_no_entry_behind() -> None:
    log = DisruptionLog()
    log.pod_deleted(worker("train-worker-0", 0, "job-a", "p0"))
    log.pod_deleted(worker("train-worker-1", 1, "job-a", "p1"))
    log.handled("ns", "train", ["train-worker-0"])
    assert log.pending("ns", "train", "job-a", 0, 2, []) != []
    log.handled("ns", "train", ["train-worker-1"])
    assert log._gone == {}
    log.pod_deleted(worker("train-worker-0", 0, "job-a", "p2"))
    log.handled("ns", "train")  # the job is gone
    assert log._gone == {}


def test_an_own_deletion_is_forgotten_once_its_pod_is_gone() -> None:
    log = DisruptionLog()
    log.deleting(["p1", "p2"])
    assert log.pod_deleted(worker("train-worker-1", 1, "job-a", "p1")) is None
    assert log.own_uids() == {"p2"}
