"""Pods with no owner reference are never a job's: `kubectl delete gtj --cascade=orphan`
leaves the workers without an owner, and a job re-created under the same name neither
counts nor adopts them. It deletes them (uid preconditions, a ForeignWorkers event) and
runs on workers of its own."""

from __future__ import annotations

from typing import Any

import pytest

from cluster.gtj import create_job, get_job, job_body, wait_phase, wait_running_workers, worker_pods
from conftest import wait_for

pytestmark = pytest.mark.cluster


def test_orphaned_workers_are_not_adopted_by_a_re_created_job(
    operator: Any, core: Any, custom: Any, kubectl: Any, namespace: str, hpus_free: Any
) -> None:
    hpus_free()
    create_job(custom, namespace, job_body("orphaned", hpusPerWorker=1, workers={"replicas": 3}))
    old = {p.metadata.uid for p in wait_running_workers(core, namespace, "orphaned", 3)}
    kubectl("delete", "gtj", "orphaned", "-n", namespace, "--cascade=orphan", "--wait=true")

    def orphans() -> list[Any] | None:
        pods = worker_pods(core, namespace, "orphaned")
        ok = len(pods) == 3 and all(not p.metadata.owner_references for p in pods)
        return pods if ok else None

    wait_for(orphans, timeout=60, what="3 workers left without an owner")
    create_job(custom, namespace, job_body("orphaned", hpusPerWorker=1, workers={"replicas": 3}))
    new_uid = get_job(custom, namespace, "orphaned")["metadata"]["uid"]

    def own_workers() -> list[Any] | None:
        pods = [p for p in worker_pods(core, namespace, "orphaned") if p.status.phase == "Running"]
        owners = [[r.uid for r in p.metadata.owner_references or []] for p in pods]
        return pods if len(pods) == 3 and owners == [[new_uid]] * 3 else None

    pods = wait_for(own_workers, timeout=90, what="3 running workers owned by the new job")
    assert not {p.metadata.uid for p in pods} & old, "an orphan was adopted"
    assert len(core.list_namespaced_pod(namespace).items) == 3  # and none left over
    job = wait_phase(custom, namespace, "orphaned", "Running", timeout=60)
    assert job["status"]["replicas"] == 3
    warning = [
        e
        for e in core.list_namespaced_event(namespace).items
        if e.reason == "ForeignWorkers" and e.involved_object.uid == new_uid
    ]
    assert len(warning) == 1 and "orphaned-worker-0" in warning[0].message
