"""A namespace quota that refuses workers is a condition with backoff and one aggregated
Warning event, not a FailedCreate event on every pass and resync."""

from __future__ import annotations

import time
from typing import Any

import pytest

from cluster.gtj import create_job, events_for, get_job, job_body, wait_phase, worker_pods
from conftest import wait_for

pytestmark = pytest.mark.cluster


def quota(hpus: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "hpus"},
        "spec": {"hard": {"requests.habana.ai/gaudi": str(hpus)}},
    }


def created(custom: Any, ns: str) -> dict[str, Any] | None:
    conds = (get_job(custom, ns, "quota").get("status") or {}).get("conditions") or []
    return next((c for c in conds if c["type"] == "Created"), None)


def test_a_quota_refusal_is_one_condition_and_one_event_over_many_resyncs(
    operator: Any, core: Any, custom: Any, namespace: str, hpus_free: Any
) -> None:
    hpus_free()
    core.create_namespaced_resource_quota(namespace, quota(2))
    # The quota controller fills in status.hard before the admission plugin enforces it.
    wait_for(
        lambda: core.read_namespaced_resource_quota("hpus", namespace).status.hard,
        timeout=30,
        what="the quota in force",
    )
    create_job(custom, namespace, job_body("quota", hpusPerWorker=2, workers={"replicas": 2}))

    def refused() -> dict[str, Any] | None:
        c = created(custom, namespace)
        return c if c is not None and c["reason"] == "QuotaExceeded" else None

    cond = wait_for(refused, timeout=60, what="Created=False/QuotaExceeded")
    assert cond["status"] == "False" and "exceeded quota: hpus" in cond["message"]
    time.sleep(16)  # three resyncs of the test operator (5 s) and retries refused again
    warnings = [e for e in events_for(core, namespace, "quota") if e.type == "Warning"]
    assert [e.reason for e in warnings] == ["QuotaExceeded"], [e.reason for e in warnings]
    assert (warnings[0].count or 1) == 1
    assert created(custom, namespace) == cond, "the condition changed while nothing did"
    assert len(worker_pods(core, namespace, "quota")) == 1  # the one the quota let through
    # Room again: the next retry creates the worker, and the condition clears.
    core.patch_namespaced_resource_quota(
        "hpus", namespace, {"spec": {"hard": {"requests.habana.ai/gaudi": "4"}}}
    )
    job = wait_phase(custom, namespace, "quota", "Running", timeout=90)
    c = next(c for c in job["status"]["conditions"] if c["type"] == "Created")
    assert c["status"] == "True"
