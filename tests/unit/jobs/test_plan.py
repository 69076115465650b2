"""The level-based pass: what a job should look like, given what exists."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gaudi_operator import api
from gaudi_operator.api import Phase, set_condition
from gaudi_operator.jobs.observation import JobView, WorkerPod, observe_pod
from gaudi_operator.jobs.plan import plan

pytestmark = pytest.mark.unit

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)


def job(spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None) -> JobView:
    return JobView(
        name="j",
        namespace="ns",
        uid="u",
        generation=3,
        spec={"image": "img", "workers": {"replicas": 4}, **(spec or {})},
        status=status or {},
    )


def worker(i: int, phase: str = "Running", gen: int = 0, **kw: Any) -> WorkerPod:
    return WorkerPod(
        name=f"j-worker-{i}",
        uid=f"uid-{i}",
        index=i,
        generation=gen,
        owner_uid=kw.pop("owner_uid", "u"),  # the job's own: controlled by its uid
        phase=phase,
        ready=phase == "Running",
        node=kw.pop("node", "node-1"),
        **kw,
    )


def cond(p: Any, type_: str) -> Any:
    return next((c for c in p.status.conditions if c.type == type_), None)


def test_new_job_creates_every_worker_and_records_start_time() -> None:
    p = plan(job(), [], NOW)
    assert p.create == [0, 1, 2, 3]
    assert p.delete == []
    assert p.ensure_children
    assert p.status.phase == Phase.PENDING
    assert p.status.start_time == "2025-06-01T12:00:00Z"
    assert p.status.selector == f"{api.LABEL_JOB_NAME}=j"
    assert p.status.observed_generation == 3
    assert p.status.workers == "0/4"


def test_only_missing_workers_are_created() -> None:
    p = plan(job(), [worker(0), worker(2)], NOW)
    assert p.create == [1, 3]


def test_all_ready_is_running_with_counts() -> None:
    p = plan(job(spec={"hpusPerWorker": 2}), [worker(i) for i in range(4)], NOW)
    assert p.create == [] and p.delete == []
    assert p.status.phase == Phase.RUNNING
    assert (p.status.replicas, p.status.ready_replicas, p.status.hpus) == (4, 4, 8)
    assert p.status.workers == "4/4"
    assert cond(p, "Ready").status == "True"
    # No event for it: phase and Ready say so (a job's way to Running posts one Normal
    # event, CreatedWorkers).
    assert p.events == []


def test_scheduled_but_not_ready_is_starting() -> None:
    pods = [worker(i, phase="Pending") for i in range(4)]
    assert plan(job(), pods, NOW).status.phase == Phase.STARTING
    pods[0] = worker(0, phase="Pending", node=None)
    assert plan(job(), pods, NOW).status.phase == Phase.PENDING


def test_scale_down_deletes_highest_index_first() -> None:
    pods = [worker(i) for i in range(6)]
    p = plan(job(status={"phase": "Running"}), pods, NOW)
    assert [w.index for w in p.delete] == [5, 4]
    assert p.create == []
    assert p.status.phase == Phase.SCALING


def test_scale_up_creates_the_new_indices() -> None:
    p = plan(
        job(spec={"workers": {"replicas": 6}}, status={"phase": "Running"}),
        [worker(i) for i in range(4)],
        NOW,
    )
    assert p.create == [4, 5]
    assert p.status.phase == Phase.SCALING


def test_pods_of_an_old_generation_are_deleted_before_their_names_are_reused() -> None:
    pods = [worker(i, gen=0) for i in range(4)]
    p = plan(job(status={"restartGeneration": 1}), pods, NOW)
    assert p.create == []  # names still taken
    assert sorted(w.index for w in p.delete) == [0, 1, 2, 3]
    assert p.status.phase == Phase.RESTARTING


def test_all_workers_succeeding_makes_the_job_succeeded() -> None:
    pods = [worker(i, phase="Succeeded") for i in range(4)]
    p = plan(job(status={"phase": "Running", "startTime": "2025-06-01T11:00:00Z"}), pods, NOW)
    assert p.status.phase == Phase.SUCCEEDED
    assert p.status.completion_time == "2025-06-01T12:00:00Z"
    assert cond(p, "Succeeded").status == "True"
    assert p.create == []
    assert p.events[0].reason == "Succeeded"


def test_some_workers_succeeded_is_not_success_and_they_are_not_recreated() -> None:
    pods = [worker(0, phase="Succeeded"), *(worker(i) for i in range(1, 4))]
    p = plan(job(), pods, NOW)
    assert p.status.phase != Phase.SUCCEEDED
    assert p.create == []


def test_rank0_success_policy() -> None:
    pods = [worker(0, phase="Succeeded"), *(worker(i) for i in range(1, 4))]
    p = plan(job(spec={"runPolicy": {"successPolicy": "Rank0"}}), pods, NOW)
    assert p.status.phase == Phase.SUCCEEDED
    # cleanPodPolicy Running (default): the still-running workers are deleted
    assert sorted(w.index for w in p.delete) == [1, 2, 3]


def test_a_failed_worker_with_no_restarts_left_fails_the_job_with_pod_node_and_exit_code() -> None:
    # With restarts left, failover restarts instead (tests/unit/test_failover_plan.py).
    pods = [
        worker(0),
        worker(1),
        worker(2, phase="Failed", node="gaudi-7", exit_code=137, reason="Error"),
        worker(3),
    ]
    spec = {"failurePolicy": {"maxRestarts": 0}}
    p = plan(job(spec=spec, status={"phase": "Running"}), pods, NOW)
    assert p.status.phase == Phase.FAILED
    lf = p.status.last_failure
    assert lf is not None
    assert (lf.pod, lf.node, lf.exit_code, lf.reason) == ("j-worker-2", "gaudi-7", 137, "Error")
    assert cond(p, "Failed").reason == "RestartLimitExceeded"
    assert "j-worker-2" in p.events[0].message and "137" in p.events[0].message
    assert p.events[0].type == "Warning"
    assert sorted(w.index for w in p.delete) == [0, 1, 3]  # cleanPodPolicy Running


NO_RESTARTS = {"failurePolicy": {"maxRestarts": 0}}  # a worker failure fails the job


def test_clean_pod_policy_none_and_all() -> None:
    pods = [worker(0, phase="Failed", exit_code=1), worker(1)]
    keep = plan(
        job(
            spec={
                "workers": {"replicas": 2},
                "runPolicy": {"cleanPodPolicy": "None"},
                **NO_RESTARTS,
            }
        ),
        pods,
        NOW,
    )
    assert keep.delete == []
    allp = plan(
        job(
            spec={"workers": {"replicas": 2}, "runPolicy": {"cleanPodPolicy": "All"}, **NO_RESTARTS}
        ),
        pods,
        NOW,
    )
    assert sorted(w.index for w in allp.delete) == [0, 1]


def test_finished_job_is_never_restarted() -> None:
    status = {"phase": "Failed", "completionTime": "2025-06-01T11:59:00Z"}
    p = plan(job(status=status), [], NOW)
    assert p.create == [] and p.status.phase == Phase.FAILED
    assert not p.ensure_children


def test_ttl_after_finished_deletes_the_job_when_due() -> None:
    done = NOW - timedelta(seconds=30)
    status = {"phase": "Succeeded", "completionTime": api.to_rfc3339(done)}
    early = plan(job(spec={"runPolicy": {"ttlSecondsAfterFinished": 60}}, status=status), [], NOW)
    assert not early.delete_job and early.requeue_after == pytest.approx(30)
    due = plan(job(spec={"runPolicy": {"ttlSecondsAfterFinished": 10}}, status=status), [], NOW)
    assert due.delete_job
    assert due.events[0].reason == "TTLExpired"


def test_deadline_fails_the_job() -> None:
    start = api.to_rfc3339(NOW - timedelta(seconds=100))
    spec = {"runPolicy": {"activeDeadlineSeconds": 60}}
    p = plan(
        job(spec=spec, status={"phase": "Running", "startTime": start}),
        [worker(i) for i in range(4)],
        NOW,
    )
    assert p.status.phase == Phase.FAILED
    assert cond(p, "Failed").reason == "DeadlineExceeded"
    assert len(p.delete) == 4
    later = plan(
        job(spec={"runPolicy": {"activeDeadlineSeconds": 600}}, status={"startTime": start}),
        [],
        NOW,
    )
    assert later.status.phase != Phase.FAILED
    assert later.requeue_after == pytest.approx(500)


def test_suspend_deletes_workers_and_keeps_the_job() -> None:
    pods = [worker(i) for i in range(4)]
    p = plan(
        job(
            spec={"suspend": True}, status={"phase": "Running", "startTime": "2025-06-01T11:00:00Z"}
        ),
        pods,
        NOW,
    )
    assert p.status.phase == Phase.SUSPENDED
    assert len(p.delete) == 4 and p.create == []
    assert p.status.start_time is None
    assert cond(p, "Suspended").status == "True"
    assert [e.reason for e in p.events] == ["Suspended"]


def test_resume_recreates_workers() -> None:
    suspended = plan(job(spec={"suspend": True}), [], NOW).status.to_dict()
    p = plan(job(status=suspended), [], NOW)
    assert p.create == [0, 1, 2, 3]
    assert cond(p, "Suspended").status == "False"
    assert "Resumed" in [e.reason for e in p.events]


def test_unusable_spec_gets_a_condition_and_one_event_naming_the_field() -> None:
    bad = job(spec={"hpusPerWorker": 12})
    p = plan(bad, [], NOW)
    c = cond(p, "InvalidSpec")
    assert c.status == "True" and "spec.hpusPerWorker" in c.message
    assert p.create == [] and p.delete == []
    assert p.events[0].type == "Warning" and "spec.hpusPerWorker" in p.events[0].message
    again = plan(JobView(**{**bad.__dict__, "status": p.status.to_dict()}), [], NOW)
    assert again.events == []  # no event storm on every resync


def test_fixing_the_spec_clears_invalid_spec() -> None:
    status = plan(job(spec={"image": ""}), [], NOW).status.to_dict()
    p = plan(job(status=status), [], NOW)
    assert cond(p, "InvalidSpec").status == "False"
    assert p.create == [0, 1, 2, 3]


def test_deleting_job_does_nothing() -> None:
    j = JobView(
        name="j",
        namespace="ns",
        uid="u",
        generation=1,
        spec={"image": "i"},
        status={},
        deleting=True,
    )
    p = plan(j, [worker(0)], NOW)
    assert p.create == [] and p.delete == []


def test_condition_transition_time_moves_only_on_flip() -> None:
    c1 = set_condition([], "Ready", False, "A", "", NOW)
    c2 = set_condition(c1, "Ready", False, "B", "", NOW + timedelta(seconds=5))
    assert c2[0].last_transition_time == c1[0].last_transition_time
    c3 = set_condition(c2, "Ready", True, "C", "", NOW + timedelta(seconds=9))
    assert c3[0].last_transition_time == "2025-06-01T12:00:09Z"


def test_observe_pod_reads_a_failed_kwok_pod() -> None:
    pod = {
        "metadata": {
            "name": "j-worker-1",
            "uid": "x",
            "labels": {api.LABEL_WORKER_INDEX: "1", api.LABEL_GENERATION: "2"},
        },
        "spec": {"nodeName": "gaudi3-node-0"},
        "status": {
            "phase": "Failed",
            "containerStatuses": [
                {
                    "name": "worker",
                    "ready": False,
                    "state": {"terminated": {"exitCode": 3, "reason": "Error"}},
                }
            ],
        },
    }
    w = observe_pod(pod)
    assert (w.index, w.generation, w.phase, w.node, w.exit_code, w.reason) == (
        1,
        2,
        "Failed",
        "gaudi3-node-0",
        3,
        "Error",
    )
    assert w.failed and w.terminal and not w.ready


def test_a_predecessors_workers_are_deleted_and_never_counted() -> None:
    # The job was deleted and re-created under the same name (uid "u" now) before the
    # garbage collector removed the old incarnation's workers: they are not this job's.
    old = [worker(i, owner_uid="old-uid") for i in range(3)]
    mine = [worker(3, owner_uid="u")]
    p = plan(job(), [*old, *mine], NOW)
    assert sorted(x.name for x in p.delete) == ["j-worker-0", "j-worker-1", "j-worker-2"]
    assert p.create == []  # their names are taken until they are gone
    assert p.status.replicas == 1 and p.status.hpus == 8  # only the job's own worker
    # Once they are gone, the job's own workers take the names.
    assert plan(job(), mine, NOW).create == [0, 1, 2]


def test_a_job_that_cannot_be_placed_says_why_and_counts_only_held_hpus() -> None:
    said = "0/4 nodes are available: 4 Insufficient habana.ai/gaudi."
    placed = [worker(i) for i in range(2)]
    waiting = [
        worker(i, phase="Pending", node=None, unschedulable=said, unschedulable_since=NOW)
        for i in range(2, 4)
    ]
    p = plan(job(), [*placed, *waiting], NOW)
    assert p.status.hpus == 16  # the two placed workers; waiting ones hold nothing
    c = cond(p, "Scheduled")
    assert c.status == "False" and c.reason == "InsufficientHPUs"
    assert "2 of 4 workers cannot be placed" in c.message and said in c.message
    assert cond(plan(job(), [worker(i) for i in range(4)], NOW), "Scheduled").status == "True"


def test_pods_without_an_owner_are_never_adopted_counted_or_kept() -> None:
    # `kubectl delete gtj j --cascade=orphan`, then the job is created again: the old
    # workers are left with the job's labels and no owner reference at all.
    orphans = [worker(i, owner_uid="") for i in range(3)]
    p = plan(job(), orphans, NOW)
    assert p.status.replicas == 0 and p.status.hpus == 0  # not this job's
    assert sorted(x.name for x in p.delete) == ["j-worker-0", "j-worker-1", "j-worker-2"]
    assert p.create == [3]  # the free name only: the others once the orphans are gone
    warning = [e for e in p.events if e.reason == "ForeignWorkers"]
    assert len(warning) == 1 and warning[0].type == "Warning"
    assert "j-worker-0, j-worker-1, j-worker-2" in warning[0].message


def test_only_progress_on_the_way_to_running_may_wait() -> None:
    from gaudi_operator.jobs.plan import progress_only

    created = plan(job(), [], NOW).status.to_dict()
    pending = [worker(i, phase="Pending", node=None) for i in range(4)]
    seen = plan(job(status=created), pending, NOW).status.to_dict()
    started = plan(job(status=seen), [worker(i, phase="Pending") for i in range(4)], NOW)
    assert started.status.phase == Phase.STARTING
    running = plan(job(status=started.status.to_dict()), [worker(i) for i in range(4)], NOW)
    assert progress_only(created, seen)  # the workers exist now
    assert progress_only(seen, started.status.to_dict())  # ... and have nodes: Starting
    assert not progress_only(started.status.to_dict(), running.status.to_dict())  # Running
    assert not progress_only({}, created)  # a new job's first status
    failed = [worker(0, phase="Failed", exit_code=1, reason="Error", finished_at=NOW)]
    restart = plan(job(status=running.status.to_dict()), failed + pending[1:], NOW)
    assert not progress_only(running.status.to_dict(), restart.status.to_dict())


def test_a_deadline_or_ttl_of_any_int64_is_planned_not_overflowed() -> None:
    # The CRD admits any int64; start + 3e18 s overflows a datetime (the spec fuzz found it).
    start = api.to_rfc3339(NOW - timedelta(seconds=100))
    huge = 3_007_141_562_579_928_045
    p = plan(
        job(spec={"runPolicy": {"activeDeadlineSeconds": huge}}, status={"startTime": start}),
        [],
        NOW,
    )
    assert p.status.phase != Phase.FAILED
    assert p.requeue_after == pytest.approx(86400)
    done = {"phase": "Succeeded", "completionTime": start, "startTime": start}
    p = plan(job(spec={"runPolicy": {"ttlSecondsAfterFinished": huge}}, status=done), [], NOW)
    assert not p.delete_job
    assert p.requeue_after == pytest.approx(86400)
