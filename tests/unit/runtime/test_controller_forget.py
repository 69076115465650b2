"""A job deleted while its reconcile pass runs leaves nothing behind in the controller."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gaudi_operator.observability import metrics
from gaudi_operator.runtime.controller import Controller

KEY = ("ns", "train")
BODY = {"metadata": {"name": "train", "namespace": "ns", "uid": "u1", "resourceVersion": "1"}}


@dataclass
class Result:
    body: Mapping[str, Any] | None
    phase: str = "Running"
    requeue_after: float | None = 30.0
    superseded: tuple[str, ...] = ()
    workers: Mapping[str, int] = field(default_factory=lambda: {"desired": 1})
    conditions: Mapping[str, bool] = field(default_factory=lambda: {"Ready": True})


class DeletedDuringPass:
    """Deletes the job from the index in the middle of its pass, as a watch event would."""

    def __init__(self, jobs: dict[Any, Any]) -> None:
        self.jobs = jobs
        self.forgotten: list[Any] = []

    async def reconcile(
        self, body: Mapping[str, Any], observed: Iterable[Any], service_exists: bool
    ) -> Result:
        self.jobs.pop(KEY)
        await asyncio.sleep(0)
        return Result(body={**BODY, "metadata": {**BODY["metadata"], "resourceVersion": "2"}})

    def forget(self, key: Any) -> None:
        self.forgotten.append(key)


def cache_entries(name: str) -> float:
    for m in metrics.CACHE_ENTRIES.collect():
        for s in m.samples:
            if s.labels["cache"] == name:
                return s.value
    raise AssertionError(f"no gaudi_operator_cache_entries{{cache={name!r}}}")


def test_a_job_deleted_during_its_pass_is_forgotten_not_recorded() -> None:
    async def run() -> Controller:
        jobs: dict[Any, Any] = {KEY: [BODY]}
        reconciler = DeletedDuringPass(jobs)
        controller = Controller(reconciler)
        controller.bind(jobs, {}, {})
        await controller.process(KEY)
        assert reconciler.forgotten == [KEY]
        return controller

    asyncio.run(run())
    for cache in ("controller_written", "job_phases", "job_conditions", "workqueue_scheduled"):
        assert cache_entries(cache) == 0, cache
    series = [
        s
        for m in metrics.JOB_SERIES.collect()
        for s in m.samples
        if s.labels.get("gtj") == "train" and s.labels.get("gtj_namespace") == "ns"
    ]
    assert series == []


class Writes:
    """A pass that writes the job's status: the answer is version 2."""

    async def reconcile(
        self, body: Mapping[str, Any], observed: Iterable[Any], service_exists: bool
    ) -> Result:
        return Result(body={**BODY, "metadata": {**BODY["metadata"], "resourceVersion": "2"}})

    def forget(self, key: Any) -> None:
        pass


def test_our_write_is_dropped_as_soon_as_the_job_event_shows_it() -> None:
    """A whole job is kept only while the index lags behind our write: the job event that
    brings the write in drops it, not the job's next pass (at rest, its resync)."""
    jobs: dict[Any, Any] = {KEY: [BODY]}
    controller = Controller(Writes())  # type: ignore[arg-type]
    controller.bind(jobs, {}, {})
    asyncio.run(controller.process(KEY))
    assert cache_entries("controller_written") == 1
    controller.observe_job(KEY)  # an event of an unrelated field: the index still lags
    assert cache_entries("controller_written") == 1
    jobs[KEY] = [{**BODY, "metadata": {**BODY["metadata"], "resourceVersion": "2"}}]
    controller.observe_job(KEY)
    assert cache_entries("controller_written") == 0
    controller.forget(KEY)
