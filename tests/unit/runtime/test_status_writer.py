"""The one status writer against a fake API server: nothing written without a change,
guarded by the version read, rebased onto another writer's conditions, stale refused."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from gaudi_operator import api
from gaudi_operator.runtime.status_writer import (
    AUTOSCALER,
    QUEUEING,
    STALL_CLOCK,
    RetrySoon,
    StatusWriter,
)
from unit.fake_api import FakeApi

pytestmark = pytest.mark.unit

READY = {"type": "Ready", "status": "False", "reason": "WorkersNotReady"}
QUEUED = {"type": "Queued", "status": "True", "reason": "Pending"}
METRICS = {"type": "MetricsUnavailable", "status": "True", "reason": "QueryFailed"}


def store(status: dict[str, Any]) -> FakeApi:
    fake = FakeApi()
    fake.add(api.PLURAL, {"metadata": {"name": "j", "namespace": "ns"}, "status": status})
    return fake


def job(fake: FakeApi) -> dict[str, Any]:
    return copy.deepcopy(fake.get(api.PLURAL, "ns", "j"))


def write(fake: FakeApi, read: dict[str, Any], new: dict[str, Any], **kw: Any) -> Any:
    return asyncio.run(StatusWriter(fake.clients()).write(read, new, **kw))


def test_no_change_is_no_request() -> None:
    fake = store({"phase": "Running", "conditions": [READY]})
    read = job(fake)
    assert write(fake, read, dict(read["status"])) is None
    assert fake.writes() == 0


def test_the_write_is_guarded_by_the_version_read_and_answers_the_object() -> None:
    fake = store({"phase": "Pending"})
    read = job(fake)
    out = write(fake, read, {"phase": "Running"})
    assert out["status"]["phase"] == "Running"
    assert out["metadata"]["resourceVersion"] != read["metadata"]["resourceVersion"]
    patch = fake.requests
    assert patch[("PATCH", api.PLURAL + "/status")] == 1


def test_a_conflict_with_another_writers_part_is_rebased_not_lost() -> None:
    fake = store({"phase": "Pending", "conditions": [READY]})
    read = job(fake)
    # The autoscaler writes its condition meanwhile.
    theirs = job(fake)
    write(fake, theirs, {"conditions": [READY, METRICS]}, writer=AUTOSCALER, fields=("conditions",))
    ready = {**READY, "status": "True", "reason": "AllWorkersReady"}
    out = write(fake, read, {"phase": "Running", "conditions": [ready]})
    assert out["status"]["phase"] == "Running"
    assert out["status"]["conditions"] == [ready, METRICS]


def test_a_conflict_with_the_writers_own_part_is_stale() -> None:
    fake = store({"phase": "Pending", "restarts": 0})
    read = job(fake)
    write(fake, job(fake), {"phase": "Pending", "restarts": 1})  # ours, not seen yet
    with pytest.raises(RetrySoon):
        write(fake, read, {"phase": "Running", "restarts": 0})
    assert job(fake)["status"]["restarts"] == 1


def test_a_partial_writer_writes_its_fields_only_and_skips_what_is_there() -> None:
    fake = store({"phase": "Running", "conditions": [READY]})
    read = job(fake)
    new = {"conditions": [READY, QUEUED]}
    out = write(fake, read, new, writer=QUEUEING, fields=("conditions",))
    assert out["status"]["conditions"] == [READY, QUEUED] and out["status"]["phase"] == "Running"
    # The same again from the old copy: a conflict, and the server has it already.
    writes = fake.writes()
    assert write(fake, read, new, writer=QUEUEING, fields=("conditions",)) is not None
    assert fake.writes() == writes + 1  # the conflicting attempt only, no second write
    progress = {"progress": {"step": 5, "time": "2026-01-01T00:00:00Z"}}
    out = write(fake, job(fake), progress, writer=STALL_CLOCK, fields=("progress",))
    assert out["status"]["progress"]["step"] == 5 and out["status"]["phase"] == "Running"


def test_a_progress_record_meanwhile_does_not_make_the_reconcilers_pass_stale() -> None:
    # The stall clock owns status.progress (the reconciler decides from its memory, not
    # from status): its record between the reconciler's read and write is rebased onto.
    fake = store({"phase": "Running", "restarts": 0})
    read = job(fake)
    progress = {"step": 7, "time": "2026-01-01T00:00:00Z"}
    write(fake, job(fake), {"progress": progress}, writer=STALL_CLOCK, fields=("progress",))
    out = write(fake, read, {"phase": "Running", "restarts": 1})
    assert out["status"]["restarts"] == 1 and out["status"]["progress"] == progress
