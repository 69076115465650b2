"""Commit before act: a restart's intent is written before any pod is touched, so an
operator killed between the two converges on restart with the restart counted once, under
both strategies (RecreateAll: a new generation; RecreateFailed: the same generation, the
intent naming the failed pod it replaces)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from chaos import fail_pod
from cluster.gtj import create_job, get_job, job_body, wait_phase, worker_pods
from conftest import wait_for

pytestmark = pytest.mark.cluster


def generation_of(pod: Any) -> str:
    return pod.metadata.labels["gaudi.scalestarter.dev/generation"]


@pytest.mark.parametrize("strategy", ["RecreateAll", "RecreateFailed"])
def test_crash_between_restart_intent_and_pod_deletion_counts_the_restart_once(
    operator: Any, core: Any, custom: Any, namespace: str, hpus_free: Any, strategy: str
) -> None:
    hpus_free()
    operator.stop()
    operator.env = {"GAUDI3_FAILPOINTS": "after-restart-intent"}
    # RecreateAll moves the world to generation 1; RecreateFailed keeps generation 0.
    gen = "1" if strategy == "RecreateAll" else "0"
    try:
        operator.start()
        policy = {"backoffSeconds": 0, "restartStrategy": strategy}
        spec = {"workers": {"replicas": 2}, "failurePolicy": policy}
        create_job(custom, namespace, job_body("intent", hpusPerWorker=2, **spec))
        wait_phase(custom, namespace, "intent", "Running")
        failed_uid = next(
            p.metadata.uid
            for p in worker_pods(core, namespace, "intent")
            if p.metadata.name == "intent-worker-1"
        )
        fail_pod(core, namespace, "intent-worker-1")

        # The operator writes the intent, then dies at the failpoint: nothing deleted yet.
        wait_for(lambda: operator.proc.poll() is not None, timeout=60, what="the crash")
        status = get_job(custom, namespace, "intent")["status"]
        assert status["restarts"] == 1 and status["restartGeneration"] == int(gen)
        assert status["lastFailure"]["pod"] == "intent-worker-1"
        if strategy == "RecreateFailed":
            assert status["replacedPods"] == [failed_uid]
        pods = worker_pods(core, namespace, "intent")
        assert {generation_of(p) for p in pods} == {"0"}
        assert failed_uid in {p.metadata.uid for p in pods}  # not deleted yet
    finally:
        operator.env = {}
        if operator.proc is None or operator.proc.poll() is not None:
            operator.start()

    def new_world() -> list[Any] | None:
        pods = worker_pods(core, namespace, "intent")
        ok = (
            len(pods) == 2
            and failed_uid not in {p.metadata.uid for p in pods}
            and all(generation_of(p) == gen and p.status.phase == "Running" for p in pods)
        )
        return pods if ok else None

    wait_for(new_world, timeout=90, what=f"2 running workers of generation {gen}")
    job = wait_phase(custom, namespace, "intent", "Running", timeout=60)
    assert job["status"]["restarts"] == 1  # counted once, not again after the restart
    time.sleep(6)  # a resync later, still once
    status = get_job(custom, namespace, "intent")["status"]
    assert status["restarts"] == 1 and status["phase"] == "Running"
    assert "replacedPods" not in status  # the record goes once the world runs again
