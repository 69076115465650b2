"""GaudiTrainingJob under real Kueue (built from its Go module, its webhooks called by the
API server on loopback): queueing on quota, admission as one unit, preemption by priority.

The workers are kwok pods: nothing trains. What these tests prove is the contract between
Kueue, the operator and the pods: who may have workers when, and what the job says.
That a preempted worker checkpoints on SIGTERM and a new one resumes from the checkpoint
is the launcher's part, proven with real torch in tests/training/test_elastic_training.py.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from chaos import complete_pod
from cluster.gtj import (
    create_job,
    events_for,
    get_job,
    wait_phase,
    wait_running_workers,
    worker_pods,
)
from cluster.queueing.support import (
    condition,
    queued_job,
    wait_admitted,
    wait_queued,
    workload_of,
)
from conftest import wait_for


def checkpoint_claim(core: Any, ns: str, name: str) -> str:
    """A claim bound to its own volume (no provisioner here): the checkpoint storage that
    outlives the workers, as a real job would use."""
    from kubernetes import client

    pv = f"{ns}-{name}"
    core.create_persistent_volume(
        client.V1PersistentVolume(
            metadata=client.V1ObjectMeta(name=pv, labels={"gaudi3-test": ns}),
            spec=client.V1PersistentVolumeSpec(
                capacity={"storage": "1Gi"},
                access_modes=["ReadWriteMany"],
                storage_class_name="",
                host_path=client.V1HostPathVolumeSource(path=f"/nonexistent/{pv}"),
                claim_ref=client.V1ObjectReference(namespace=ns, name=name),
            ),
        )
    )
    core.create_namespaced_persistent_volume_claim(
        ns,
        client.V1PersistentVolumeClaim(
            metadata=client.V1ObjectMeta(name=name),
            spec=client.V1PersistentVolumeClaimSpec(
                access_modes=["ReadWriteMany"],
                storage_class_name="",
                volume_name=pv,
                resources=client.V1VolumeResourceRequirements(requests={"storage": "1Gi"}),
            ),
        ),
    )
    wait_for(
        lambda: core.read_namespaced_persistent_volume_claim(name, ns).status.phase == "Bound",
        timeout=60,
        what=f"claim {name} bound",
    )
    return name


@pytest.fixture
def claims(core: Any, namespace: str) -> Iterator[Callable[[str], str]]:
    yield lambda name: checkpoint_claim(core, namespace, name)
    with contextlib.suppress(Exception):
        core.delete_collection_persistent_volume(label_selector=f"gaudi3-test={namespace}")


def finish(core: Any, ns: str, name: str, custom: Any) -> None:
    for pod in worker_pods(core, ns, name):
        complete_pod(core, ns, pod.metadata.name)
    wait_phase(custom, ns, name, "Succeeded", timeout=60)


def test_a_second_job_waits_for_quota_until_the_first_finishes(
    queue: dict[str, str], operator: Any, core: Any, custom: Any, namespace: str, hpus_free: Any
) -> None:
    hpus_free()
    create_job(custom, namespace, queued_job("first", queue["local"]))
    first = wait_admitted(custom, namespace, "first")
    assert queue["cluster"] in condition(first, "Queued")["message"]  # type: ignore[index]
    wait_running_workers(core, namespace, "first", 2)

    create_job(custom, namespace, queued_job("second", queue["local"]))
    second = wait_for(
        lambda: (
            (j := get_job(custom, namespace, "second"))
            and "quota" in ((condition(j, "Queued") or {}).get("message") or "")
            and j
        ),
        timeout=60,
        what="second to say it waits for quota",
    )
    queued = condition(second, "Queued")  # type: ignore[arg-type]
    assert queued is not None and queued["status"] == "True", queued
    assert second["spec"]["suspend"] is True  # type: ignore[index]
    assert second["status"]["phase"] == "Suspended"  # type: ignore[index]
    suspended = condition(second, "Suspended")  # type: ignore[arg-type]
    assert suspended is not None and suspended["reason"] == "Queued", suspended
    assert worker_pods(core, namespace, "second") == []

    # scheduling.queue names the LocalQueue: the Workload is queued there.
    wl = workload_of(custom, namespace, "second")
    assert wl is not None and wl["spec"]["queueName"] == queue["local"]
    assert wl["metadata"]["ownerReferences"][0]["uid"] == second["metadata"]["uid"]  # type: ignore[index]
    (pod_set,) = wl["spec"]["podSets"]
    assert pod_set["count"] == 2

    finish(core, namespace, "first", custom)

    # Kueue admission reacts to the job's Succeeded (a watch event, another loop): the
    # Workload is marked Finished a moment after the job's phase says so (about 0.1 s).
    def finished() -> bool:
        wl_first = workload_of(custom, namespace, "first")
        assert wl_first is not None
        conditions = (wl_first.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Finished" and c["status"] == "True" for c in conditions)

    wait_for(finished, timeout=10, interval=0.1, what="the first job's Workload Finished")
    wait_admitted(custom, namespace, "second")
    wl = workload_of(custom, namespace, "second")
    assert wl is not None and wl["status"]["admission"]["clusterQueue"] == queue["cluster"]
    wait_running_workers(core, namespace, "second", 2)
    wait_phase(custom, namespace, "second", "Running")
    assert get_job(custom, namespace, "second")["spec"]["suspend"] is False
    reasons = [e.reason for e in events_for(core, namespace, "second")]
    assert "Pending" in reasons and "Admitted" in reasons and "Resumed" in reasons


def test_a_higher_priority_job_preempts_a_running_one_which_resumes_after_it(
    queue: dict[str, str],
    priority_classes: dict[str, str],
    operator: Any,
    core: Any,
    custom: Any,
    namespace: str,
    hpus_free: Any,
    claims: Callable[[str], str],
) -> None:
    hpus_free()
    claim = claims("low-ckpt")
    create_job(custom, namespace, queued_job("low", queue["local"], priority_classes["low"], claim))
    wait_admitted(custom, namespace, "low")
    before = wait_running_workers(core, namespace, "low", 2)
    low = wait_phase(custom, namespace, "low", "Running")
    volumes = [
        next(
            v for v in p.spec.volumes if v.name == "checkpoints"
        ).persistent_volume_claim.claim_name
        for p in before
    ]

    create_job(custom, namespace, queued_job("high", queue["local"], priority_classes["high"]))
    preempted = wait_queued(custom, namespace, "low", reason="Preempted")
    assert "Preempted" in condition(preempted, "Queued")["message"]  # type: ignore[index]
    wait_for(
        lambda: get_job(custom, namespace, "low")["spec"]["suspend"] is True,
        timeout=30,
        what="low suspended",
    )
    wait_for(
        lambda: worker_pods(core, namespace, "low") == [], timeout=60, what="low's workers gone"
    )
    wait_admitted(custom, namespace, "high")
    wait_running_workers(core, namespace, "high", 2)
    low_wl = workload_of(custom, namespace, "low")
    assert low_wl is not None
    assert low_wl["spec"]["priority"] == 10
    assert not low_wl["status"].get("admission"), "the preempted job handed its quota back"
    high_wl = workload_of(custom, namespace, "high")
    assert high_wl is not None and high_wl["spec"]["priority"] == 1000
    assert wait_phase(custom, namespace, "low", "Suspended")

    finish(core, namespace, "high", custom)
    wait_admitted(custom, namespace, "low")
    after = wait_running_workers(core, namespace, "low", 2)
    resumed = wait_phase(custom, namespace, "low", "Running")
    # New pods, same world: preemption is not a failure (no restart counted, same restart
    # generation, same checkpoint claim, so the launcher resumes from its last checkpoint).
    assert {p.metadata.uid for p in after}.isdisjoint({p.metadata.uid for p in before})
    assert resumed["status"].get("restarts", 0) == low["status"].get("restarts", 0) == 0
    assert resumed["status"].get("restartGeneration", 0) == low["status"].get(
        "restartGeneration", 0
    )
    assert (
        [
            next(
                v for v in p.spec.volumes if v.name == "checkpoints"
            ).persistent_volume_claim.claim_name
            for p in after
        ]
        == volumes
        == [claim, claim]
    )
    reasons = [e.reason for e in events_for(core, namespace, "low")]
    assert "Preempted" in reasons and "Resumed" in reasons


def test_a_deleted_job_keeps_its_quota_until_its_last_worker_is_gone(
    queue: dict[str, str],
    operator: Any,
    core: Any,
    custom: Any,
    kubectl: Any,
    namespace: str,
    hpus_free: Any,
) -> None:
    hpus_free()
    create_job(custom, namespace, queued_job("first", queue["local"]))
    wait_admitted(custom, namespace, "first")
    wait_running_workers(core, namespace, "first", 2)
    create_job(custom, namespace, queued_job("second", queue["local"]))
    wait_queued(custom, namespace, "second", reason="Pending")
    # A worker that takes its time to go (as one writing a checkpoint would).
    hold = {"metadata": {"finalizers": ["gaudi3.test/hold"]}}
    core.patch_namespaced_pod("first-worker-0", namespace, hold)
    try:
        kubectl("delete", "gtj", "first", "-n", namespace, "--wait=false")

        def deleting() -> dict[str, Any] | None:
            wl = workload_of(custom, namespace, "first")
            return wl if wl is not None and wl["metadata"].get("deletionTimestamp") else None

        wl = wait_for(deleting, timeout=30, what="first's Workload being deleted")
        assert "kueue.x-k8s.io/resource-in-use" in wl["metadata"]["finalizers"]  # type: ignore[index]
        time.sleep(3)  # Kueue admits within a second once quota is free; it must not be.
        assert workload_of(custom, namespace, "first") is not None
        queued = condition(get_job(custom, namespace, "second"), "Queued")
        assert queued is not None and queued["status"] == "True", queued
        assert worker_pods(core, namespace, "second") == []
    finally:  # never leave a pod the namespace cannot delete
        release = {"metadata": {"finalizers": None}}
        with contextlib.suppress(Exception):
            core.patch_namespaced_pod("first-worker-0", namespace, release)
    wait_for(
        lambda: workload_of(custom, namespace, "first") is None,
        timeout=30,
        what="first's Workload gone with its last worker",
    )
    wait_admitted(custom, namespace, "second")
    wait_running_workers(core, namespace, "second", 2)
