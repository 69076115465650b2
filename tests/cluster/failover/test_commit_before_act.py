"""Commit before act: a restart's intent is written before any pod is touched, so an
operator killed between the two converges on restart with the restart counted once."""

from __future__ import annotations

from typing import Any

import pytest

from chaos import fail_pod
from cluster.gtj import create_job, get_job, job_body, wait_phase, worker_pods
from conftest import wait_for

pytestmark = pytest.mark.cluster


def generation_of(pod: Any) -> str:
    return pod.metadata.labels["gaudi.scalestarter.dev/generation"]


def test_crash_between_restart_intent_and_pod_deletion_counts_the_restart_once(
    operator: Any, core: Any, custom: Any, namespace: str, hpus_free: Any
) -> None:
    operator.stop()
    operator.env = {"GAUDI3_FAILPOINTS": "after-restart-intent"}
    try:
        operator.start()
        spec = {"workers": {"replicas": 2}, "failurePolicy": {"backoffSeconds": 0}}
        create_job(custom, namespace, job_body("intent", hpusPerWorker=2, **spec))
        wait_phase(custom, namespace, "intent", "Running")
        fail_pod(core, namespace, "intent-worker-1")

        # The operator writes the intent, then dies at the failpoint: nothing deleted yet.
        wait_for(lambda: operator.proc.poll() is not None, timeout=60, what="the crash")
        status = get_job(custom, namespace, "intent")["status"]
        assert status["restarts"] == 1 and status["restartGeneration"] == 1
        assert status["lastFailure"]["pod"] == "intent-worker-1"
        assert {generation_of(p) for p in worker_pods(core, namespace, "intent")} == {"0"}
    finally:
        operator.env = {}
        if operator.proc is None or operator.proc.poll() is not None:
            operator.start()

    def new_world() -> list[Any] | None:
        pods = worker_pods(core, namespace, "intent")
        ok = len(pods) == 2 and all(
            generation_of(p) == "1" and p.status.phase == "Running" for p in pods
        )
        return pods if ok else None

    wait_for(new_world, timeout=90, what="2 running workers of generation 1")
    job = wait_phase(custom, namespace, "intent", "Running", timeout=60)
    assert job["status"]["restarts"] == 1  # counted once, not again after the restart
