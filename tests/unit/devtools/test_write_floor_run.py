"""The write-floor run (`benchmark reconcile --versus floor`): its one status write is a
Running job's status in the operator's own model, and a job's writes wait for exactly its
own pods."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from gaudi_devtools.benchmarks.floor import _PodsRunning, running_status
from gaudi_operator import api
from gaudi_operator.jobs.observation import parse_status

pytestmark = pytest.mark.unit


def test_the_one_status_write_is_a_running_jobs_status() -> None:
    raw = running_status("job-00007", 8, 1, datetime(2026, 12, 8, tzinfo=UTC))
    status = parse_status(raw)
    assert status.phase == api.Phase.RUNNING
    assert (status.workers, status.replicas, status.ready_replicas, status.hpus) == ("8/8", 8, 8, 8)
    assert raw["selector"] == api.job_selector("job-00007")
    ready = next(c for c in raw["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["observedGeneration"] == 1
    assert raw["startTime"] == "2026-12-08T00:00:00Z"


def pod(job: str, index: int, phase: str) -> dict[str, object]:
    return {
        "metadata": {"name": f"{job}-worker-{index}", "labels": {api.LABEL_JOB_NAME: job}},
        "status": {"phase": phase},
    }


def test_a_job_is_running_when_its_own_pods_all_are() -> None:
    async def scenario() -> list[str]:
        seen = _PodsRunning()
        done: list[str] = []

        async def wait(job: str) -> None:
            await seen.all_running(job, 2)
            done.append(job)

        a, b = asyncio.ensure_future(wait("a")), asyncio.ensure_future(wait("b"))
        await asyncio.sleep(0)
        seen.see("ADDED", pod("a", 0, "Running"))
        seen.see("ADDED", pod("b", 0, "Running"))
        seen.see("ADDED", pod("b", 1, "Pending"))
        seen.see("MODIFIED", pod("a", 0, "Running"))  # the same pod twice counts once
        await asyncio.sleep(0)
        assert done == []
        seen.see("ADDED", pod("a", 1, "Running"))
        await asyncio.sleep(0)
        assert done == ["a"]
        seen.see("DELETED", pod("b", 0, "Running"))  # a deleted pod is not running
        seen.see("MODIFIED", pod("b", 1, "Running"))
        await asyncio.sleep(0)
        assert done == ["a"]
        seen.see("ADDED", pod("b", 2, "Running"))
        await asyncio.wait_for(asyncio.gather(a, b), 1)
        return done

    assert asyncio.run(scenario()) == ["a", "b"]


def test_pods_running_before_anyone_waits_are_counted() -> None:
    async def scenario() -> None:
        seen = _PodsRunning()
        seen.see("ADDED", pod("c", 0, "Running"))
        await asyncio.wait_for(seen.all_running("c", 1), 1)

    asyncio.run(scenario())
