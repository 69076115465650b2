"""A job deleted and re-created under the same name while its old workers still exist:
the new job never takes the old incarnation's pods for its own (children are the job's by
owner uid), and ends with exactly its own workers."""

from __future__ import annotations

from typing import Any

import pytest

from cluster.gtj import create_job, get_job, job_body, wait_phase, wait_running_workers, worker_pods
from conftest import wait_for

pytestmark = pytest.mark.cluster

HOLD = "test.gaudi3.scalestarter.dev/hold"


def test_recreated_job_never_adopts_its_predecessors_workers(
    operator: Any, core: Any, custom: Any, namespace: str, hpus_free: Any
) -> None:
    create_job(custom, namespace, job_body("again", hpusPerWorker=2, workers={"replicas": 3}))
    wait_running_workers(core, namespace, "again", 3)
    old_uid = get_job(custom, namespace, "again")["metadata"]["uid"]
    # A finalizer keeps the old workers around after the garbage collector acts, as a slow
    # collector or a node that never confirms would.
    for pod in worker_pods(core, namespace, "again"):
        core.patch_namespaced_pod(
            pod.metadata.name, namespace, {"metadata": {"finalizers": [HOLD]}}
        )
    custom.delete_namespaced_custom_object(
        "gaudi.scalestarter.dev", "v1alpha1", namespace, "gauditrainingjobs", "again"
    )
    wait_for(
        lambda: (
            all(p.metadata.deletion_timestamp for p in worker_pods(core, namespace, "again"))
            or None
        ),
        timeout=60,
        what="the old workers marked for deletion",
    )
    create_job(custom, namespace, job_body("again", hpusPerWorker=2, workers={"replicas": 3}))
    new_uid = get_job(custom, namespace, "again")["metadata"]["uid"]
    assert new_uid != old_uid

    def counted_nothing_yet() -> dict[str, Any] | None:
        status = get_job(custom, namespace, "again").get("status") or {}
        return status if status.get("workers") == "0/3" else None

    status = wait_for(counted_nothing_yet, timeout=30, what="a status of the new job")
    assert status.get("replicas", 0) == 0 and status.get("hpus", 0) == 0

    for pod in worker_pods(core, namespace, "again"):
        core.patch_namespaced_pod(pod.metadata.name, namespace, {"metadata": {"finalizers": None}})

    def own_workers() -> list[Any] | None:
        pods = worker_pods(core, namespace, "again")
        owners = {p.metadata.owner_references[0].uid for p in pods}
        return pods if len(pods) == 3 and owners == {new_uid} else None

    pods = wait_for(own_workers, timeout=90, what="3 workers owned by the new job")
    assert sorted(p.metadata.name for p in pods) == [f"again-worker-{i}" for i in range(3)]
    wait_phase(custom, namespace, "again", "Running", timeout=90)
