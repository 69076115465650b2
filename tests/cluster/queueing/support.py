"""What the Kueue tests share: a queued job's manifest, and waits on what Kueue and the
operator say of it."""

from __future__ import annotations

from typing import Any

from cluster.gtj import get_job, job_body
from conftest import wait_for

KUEUE = ("kueue.x-k8s.io", "v1beta2")


def queued_job(
    name: str, queue: str, priority: str | None = None, claim: str | None = None
) -> dict[str, Any]:
    body = job_body(name, hpusPerWorker=4, workers={"replicas": 2}, scheduling={"queue": queue})
    if claim:
        body["spec"]["checkpoint"] = {"volumeClaimName": claim}
    if priority:
        body["metadata"]["labels"] = {"kueue.x-k8s.io/priority-class": priority}
    return body


def condition(job: dict[str, Any], type_: str) -> dict[str, Any] | None:
    conds = (job.get("status") or {}).get("conditions") or []
    return next((c for c in conds if c["type"] == type_), None)


def workload_of(custom: Any, ns: str, job: str) -> dict[str, Any] | None:
    group, version = KUEUE
    items = custom.list_namespaced_custom_object(
        group, version, ns, "workloads", label_selector=f"gaudi.scalestarter.dev/job-name={job}"
    )["items"]
    return items[0] if items else None


def wait_queued(custom: Any, ns: str, name: str, reason: str | None = None) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        job = get_job(custom, ns, name)
        q = condition(job, "Queued")
        ok = q is not None and q["status"] == "True" and (reason is None or q["reason"] == reason)
        return job if ok else None

    return wait_for(check, timeout=60, what=f"{name} Queued ({reason or 'any reason'})")  # type: ignore[return-value]


def wait_admitted(custom: Any, ns: str, name: str, timeout: float = 60) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        job = get_job(custom, ns, name)
        q = condition(job, "Queued")
        ok = q is not None and q["status"] == "False" and q["reason"] == "Admitted"
        return job if ok else None

    return wait_for(check, timeout=timeout, what=f"{name} admitted by Kueue")  # type: ignore[return-value]
