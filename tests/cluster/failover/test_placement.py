"""A job that cannot be placed says why, counts only the HPUs it holds, and (without gang
scheduling) does not keep a half-placed world holding HPUs forever."""

from __future__ import annotations

from typing import Any

import pytest

from cluster.gtj import create_job, get_job, job_body
from conftest import wait_for

pytestmark = pytest.mark.cluster


def condition(job: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in job["status"].get("conditions") or [] if c["type"] == type_), {})


def test_a_job_too_big_for_the_cluster_says_why(
    operator: Any, custom: Any, namespace: str, hpus_free: Any
) -> None:
    # 50 workers of 8 HPUs on a cluster of 4 nodes with 8 HPUs each.
    spec = {"workers": {"replicas": 50}, "failurePolicy": {"placementTimeoutSeconds": 0}}
    create_job(custom, namespace, job_body("huge", hpusPerWorker=8, **spec))

    def says_why() -> dict[str, Any] | None:
        job = get_job(custom, namespace, "huge")
        c = condition(job, "Scheduled") if job.get("status") else {}
        placed = (job.get("status") or {}).get("hpus") == 32  # the 4 placed workers' HPUs
        return (
            job
            if placed and c.get("status") == "False" and "46 of 50" in c.get("message", "")
            else None
        )

    job = wait_for(says_why, timeout=90, what="the Scheduled condition saying why")
    c = condition(job, "Scheduled")
    assert c["reason"] == "InsufficientHPUs" and "Insufficient habana.ai/gaudi" in c["message"]
    assert job["status"]["phase"] == "Pending"


def test_a_half_placed_world_releases_its_hpus_and_retries(
    operator: Any, core: Any, custom: Any, namespace: str, hpus_free: Any
) -> None:
    spec = {
        "workers": {"replicas": 5},
        "failurePolicy": {"placementTimeoutSeconds": 3, "backoffSeconds": 0},
    }
    create_job(custom, namespace, job_body("half", hpusPerWorker=8, **spec))

    def released() -> dict[str, Any] | None:
        status = get_job(custom, namespace, "half").get("status") or {}
        return (
            status
            if (status.get("lastFailure") or {}).get("reason") == "PlacementTimeout"
            else None
        )

    status = wait_for(released, timeout=90, what="the half-placed world released")
    assert "could not be placed" in status["lastFailure"]["message"]
    assert status["restarts"] == 0  # nobody's fault: never counted against maxRestarts
    assert status.get("restartGeneration", 0) >= 1
