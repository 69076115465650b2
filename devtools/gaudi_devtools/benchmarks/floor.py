"""`--versus floor`: the write floor with no operator, the best any job controller that
makes these writes could do on this cluster.

The load generator creates the jobs as in the operator's run, and then, in the operator's
place and with the same 32 requests in flight, makes exactly the writes the floor allows a
job of N workers (issue 21) and nothing else:
- the N worker pods, the operator's own manifests, owned by the job;
- a Service when N > 1;
- one Normal event;
- one status write, Running, once every pod of the job is Running (seen on one pod watch).

No planning, no indices, no kopf: what is left between this run and bare pods is the
cluster's own cost of a job's objects (the job create, the owner references the garbage
collector follows, the Service's endpoints, the status write, the event). When this run is
already beyond a time goal, no operator can meet that goal on this machine.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any

from gaudi_devtools import kube_async as kube
from gaudi_devtools.benchmarks.reconcile import (
    IN_FLIGHT,
    CpuProbe,
    Meter,
    _drop_namespace,
    _namespace,
    _pod_running,
    _Watched,
    console,
    job_manifest,
    jobs_gone,
)
from gaudi_operator import api
from gaudi_operator.api.conditions import set_condition
from gaudi_operator.api.spec import ConditionType, Phase
from gaudi_operator.api.status import GaudiTrainingJobStatus
from gaudi_operator.jobs import manifests

TRIES, RETRY_SECONDS = 20, 0.5  # a write the API server turned away with a 429


def running_status(name: str, workers: int, hpus: int, started: datetime) -> dict[str, Any]:
    """The status a Running job of `workers` shows, in the operator's own model."""
    now = datetime.now(UTC)
    conds: list[Any] = []
    for kind, reason in (
        (ConditionType.CREATED, "WorkersCreated"),
        (ConditionType.SCHEDULED, "AllScheduled"),
        (ConditionType.READY, "AllWorkersReady"),
    ):
        conds = set_condition(conds, kind, True, reason, f"{workers} workers", now, 1)
    status = GaudiTrainingJobStatus(
        phase=Phase.RUNNING,
        conditions=conds,
        replicas=workers,
        ready_replicas=workers,
        selector=api.job_selector(name),
        workers=f"{workers}/{workers}",
        hpus=workers * hpus,
        start_time=api.to_rfc3339(started),
        observed_generation=1,
    )
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)


class _PodsRunning:
    """Running pods per job, from one watch of every worker in the namespace."""

    def __init__(self) -> None:
        self.by_job: dict[str, set[str]] = {}
        self.waiting: dict[str, tuple[int, asyncio.Event]] = {}

    def see(self, kind: str, obj: dict[str, Any]) -> None:
        job = (obj["metadata"].get("labels") or {}).get(api.LABEL_JOB_NAME, "")
        pods = self.by_job.setdefault(job, set())
        if kind != "DELETED" and _pod_running(obj):
            pods.add(obj["metadata"]["name"])
        else:
            pods.discard(obj["metadata"]["name"])
        self._check(job)

    def _check(self, job: str) -> None:
        want = self.waiting.get(job)
        if want is not None and len(self.by_job.get(job, ())) >= want[0]:
            want[1].set()

    async def all_running(self, job: str, workers: int) -> None:
        self.waiting[job] = (workers, asyncio.Event())
        self._check(job)
        await self.waiting[job][1].wait()
        del self.waiting[job]


async def run_floor(
    kubeconfig: str, ns: str, jobs: int, workers: int, hpus: int, limit_s: float, cpu: CpuProbe
) -> dict[str, Any]:
    clients = await kube.connect(kubeconfig)
    core, client = clients.core, clients.api_client
    try:
        await _namespace(core, ns)
        user, controller = asyncio.Semaphore(IN_FLIGHT), asyncio.Semaphore(IN_FLIGHT)
        jobs_path = f"/apis/{api.GROUP}/{api.VERSION}/namespaces/{ns}/{api.PLURAL}"
        running = _PodsRunning()
        pods_watch = _Watched(
            clients,
            f"/api/v1/namespaces/{ns}/pods",
            api.LABEL_JOB_NAME,
            _pod_running,
            jobs * workers,
            on_event=running.see,
        )
        submitted: list[float] = []
        watched_jobs = _Watched(
            clients,
            jobs_path,
            "",
            lambda j: (j.get("status") or {}).get("phase") == "Running",
            jobs,
        ).start()
        pods_watch.start()

        async def write(
            method: str, path: str, body: Any, merge: bool = False, slots: Any = None
        ) -> Any:
            headers = {"Accept": "application/json", "Content-Type": "application/json"}
            if merge:
                headers["Content-Type"] = "application/merge-patch+json"
            async with slots or controller:  # the user's creates have slots of their own
                for _ in range(TRIES):
                    resp = await client.call_api(
                        path,
                        method,
                        body=body,
                        header_params=headers,
                        auth_settings=["BearerToken"],
                        _preload_content=False,
                    )
                    try:
                        data = await resp.read()
                    finally:
                        resp.release()
                    # 429: the API server's priority and fairness turned it away unread, so it
                    # is safe to send again (as the operator's client does); anything else ends.
                    if resp.status != 429:
                        break
                    await asyncio.sleep(RETRY_SECONDS)
                if resp.status >= 300:
                    raise RuntimeError(f"{method} {path}: {resp.status} {data[:300]!r}")
                return json.loads(data)

        async def job_lifecycle(i: int) -> None:
            name = f"job-{i:05d}"
            created = await write("POST", jobs_path, job_manifest(name, workers, hpus), slots=user)
            submitted.append(time.monotonic())
            started = datetime.now(UTC)
            spec = api.GaudiTrainingJobSpec.model_validate(created["spec"])
            ref = manifests.JobRef(name, ns, created["metadata"]["uid"])
            children = [
                write(
                    "POST",
                    f"/api/v1/namespaces/{ns}/pods",
                    manifests.worker_pod_manifest(spec, ref, w, 0),
                )
                for w in range(workers)
            ]
            if manifests.needs_service(spec):
                children.append(
                    write(
                        "POST", f"/api/v1/namespaces/{ns}/services", manifests.service_manifest(ref)
                    )
                )
            await asyncio.gather(*children)
            await write("POST", f"/api/v1/namespaces/{ns}/events", _event(created, workers))
            await running.all_running(name, workers)
            body = {"status": running_status(name, workers, hpus, started)}
            await write("PATCH", f"{jobs_path}/{name}/status", body, merge=True)

        meter = await Meter(clients, cpu).start()
        t0 = time.monotonic()
        try:
            work = asyncio.gather(*(job_lifecycle(i) for i in range(jobs)))
            waiting = asyncio.ensure_future(watched_jobs.wait("floor jobs", t0, limit_s))
            # A write that failed ends the run now, not at the time limit; a time limit
            # reached ends the writes still waiting for their pods.
            await asyncio.wait({work, waiting}, return_when=asyncio.FIRST_EXCEPTION)
            for failed in (work, waiting):
                if failed.done() and failed.exception() is not None:
                    work.cancel()
                    waiting.cancel()
                    raise failed.exception()  # type: ignore[misc]
            await work
            first_running, all_running = await waiting
            _, pods_running = await pods_watch.wait("floor pods", t0, limit_s)
        finally:
            watched_jobs.close()
            pods_watch.close()
        _, measured = await meter.read(jobs, api.GROUP, api.PLURAL)
        console.print(
            f"write floor, no operator: all {jobs} jobs Running after {all_running:.2f} s"
        )
        cleaned = await jobs_gone(clients, ns, limit_s)
        return {
            "submitted": max(submitted) - t0,
            "first_running": first_running,
            "all_pods_running": pods_running,
            "all_running": all_running,
            "cleaned": cleaned,
            **measured,
        }
    finally:
        try:
            await _drop_namespace(core, ns)
        finally:
            await clients.close()


def _event(job: dict[str, Any], workers: int) -> dict[str, Any]:
    """The one Normal event, shaped as the operator's (observability.events)."""
    meta = job["metadata"]
    now = datetime.now(UTC)
    stamp = api.to_rfc3339(now)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta['name']}.{time.time_ns():x}", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"],
        },
        "type": "Normal",
        "reason": "CreatedWorkers",
        "message": f"created {workers} worker pods",
        "source": {"component": "gaudi-operator"},
        "reportingComponent": "gaudi-operator",
        "reportingInstance": "write-floor-benchmark",
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "eventTime": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "action": "CreatedWorkers",
        "count": 1,
    }
