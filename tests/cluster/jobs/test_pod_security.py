"""A namespace whose Pod Security level refuses HPU workers (they need hostIPC and
SYS_NICE, Intel's pod contract) gets the API server's refusal as Created=False with
reason CreateForbidden, retried with backoff; labelling the namespace privileged lets the
next retry through. What docs/gaudi.md ("Pod Security") and troubleshooting promise."""

from __future__ import annotations

from typing import Any

import pytest

from cluster.gtj import (
    create_job,
    events_for,
    get_job,
    job_body,
    wait_event,
    wait_phase,
    worker_pods,
)
from conftest import wait_for

pytestmark = pytest.mark.cluster

ENFORCE = "pod-security.kubernetes.io/enforce"


def condition(custom: Any, ns: str, kind: str) -> dict[str, Any] | None:
    conds = (get_job(custom, ns, "psa").get("status") or {}).get("conditions") or []
    return next((c for c in conds if c["type"] == kind), None)


def test_a_baseline_namespace_refuses_hpu_workers_as_create_forbidden(
    operator: Any, core: Any, custom: Any, namespace: str, hpus_free: Any
) -> None:
    hpus_free()
    core.patch_namespace(namespace, {"metadata": {"labels": {ENFORCE: "baseline"}}})
    create_job(custom, namespace, job_body("psa", hpusPerWorker=1))

    def refused() -> dict[str, Any] | None:
        c = condition(custom, namespace, "Created")
        return c if c is not None and c["reason"] == "CreateForbidden" else None

    cond = wait_for(refused, timeout=60, what="Created=False/CreateForbidden")
    assert cond["status"] == "False"
    assert "violates PodSecurity" in cond["message"] and "hostIPC" in cond["message"]
    assert worker_pods(core, namespace, "psa") == []
    # A refusal that may pass is not an invalid spec.
    invalid = condition(custom, namespace, "InvalidSpec")
    assert invalid is None or invalid["status"] == "False"
    wait_event(core, namespace, "psa", "CreateForbidden")
    warnings = [e.reason for e in events_for(core, namespace, "psa") if e.type == "Warning"]
    assert warnings == ["CreateForbidden"], warnings
    core.patch_namespace(namespace, {"metadata": {"labels": {ENFORCE: "privileged"}}})
    job = wait_phase(custom, namespace, "psa", "Running", timeout=120)
    c = next(c for c in job["status"]["conditions"] if c["type"] == "Created")
    assert c["status"] == "True"
