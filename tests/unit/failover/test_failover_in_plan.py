"""Failover inside the lifecycle pass: what one reconcile pass writes and deletes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gaudi_operator.api import FailureReason, Phase, to_rfc3339
from gaudi_operator.failover.policy import Failure, Signals, node_health
from gaudi_operator.failover.progress import Progress
from gaudi_operator.jobs.observation import JobView, WorkerPod
from gaudi_operator.jobs.plan import plan

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def job(policy: dict[str, Any], status: dict[str, Any] | None = None) -> JobView:
    return JobView(
        name="j",
        namespace="ns",
        uid="u",
        generation=1,
        spec={"image": "img", "workers": {"replicas": 4}, "failurePolicy": policy},
        status={"phase": "Running", **(status or {})},
    )


def worker(i: int, phase: str = "Running", gen: int = 0, node: str = "n0", **kw: Any) -> WorkerPod:
    return WorkerPod(
        name=f"j-worker-{i}",
        uid=f"u{i}-{gen}",
        index=i,
        generation=gen,
        owner_uid=kw.pop("owner_uid", "u"),  # the job's own: controlled by its uid
        phase=phase,
        ready=phase == "Running",
        node=node,
        **kw,
    )


def cond(p: Any, type_: str) -> Any:
    return next((c for c in p.status.conditions if c.type == type_), None)


def failed(i: int = 2) -> WorkerPod:
    return worker(i, "Failed", exit_code=1, reason="Error", finished_at=NOW)


def test_recreate_all_bumps_the_generation_and_drains_the_old_world() -> None:
    pods = [worker(0), worker(1), failed(2), worker(3)]
    p = plan(job({"backoffSeconds": 0}), pods, NOW)
    assert p.status.restart_generation == 1 and p.status.restarts == 1
    assert sorted(w.index for w in p.delete) == [0, 1, 2, 3]  # one new generation, no mix
    assert p.create == []  # names are free only once the old pods are gone
    assert p.status.phase == Phase.RESTARTING
    assert cond(p, "Restarting").status == "True" and cond(p, "Restarting").reason == "Error"
    assert {e.reason for e in p.events} >= {"WorkerFailed", "RestartingWorkers"}


def test_recreate_failed_deletes_only_the_failed_worker() -> None:
    pods = [worker(0), worker(1), failed(2), worker(3)]
    p = plan(job({"backoffSeconds": 0, "restartStrategy": "RecreateFailed"}), pods, NOW)
    assert p.status.restart_generation == 0 and p.status.restarts == 1
    assert [w.name for w in p.delete] == ["j-worker-2"]


def test_backoff_holds_the_restart_and_says_so() -> None:
    pods = [worker(0), worker(1), failed(2), worker(3)]
    p = plan(job({"backoffSeconds": 10}), pods, NOW + timedelta(seconds=2))
    assert p.status.restarts == 0 and p.delete == []
    assert p.status.phase == Phase.RESTARTING
    assert p.requeue_after == pytest.approx(8)
    assert "backoff" in cond(p, "Restarting").message


def test_node_lost_force_deletes_and_excludes_the_node() -> None:
    dead = {
        "metadata": {"name": "n1"},
        "status": {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "False",
                    "lastTransitionTime": to_rfc3339(NOW - timedelta(seconds=40)),
                }
            ]
        },
    }
    pods = [worker(0), worker(1, node="n1"), worker(2), worker(3)]
    alive = {
        "metadata": {"name": "n0"},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }
    signals = Signals(nodes={"n0": node_health(alive, "n0"), "n1": node_health(dead, "n1")})
    p = plan(job({"backoffSeconds": 0}), pods, NOW, signals)
    assert p.status.excluded_nodes == ["n1"]
    assert p.force_delete == ["j-worker-1"]
    assert p.status.last_failure is not None and p.status.last_failure.reason == "NodeLost"


def test_restart_ignore_limit_keeps_the_count() -> None:
    rules = [{"reasons": ["NodeLost"], "action": "RestartIgnoreLimit"}]
    pods = [worker(0), worker(1), worker(2), worker(3)]
    p = plan(
        job({"backoffSeconds": 0, "maxRestarts": 0, "rules": rules}),
        pods,
        NOW,
        Signals(nodes={"n0": node_health(None, "n0")}),
    )
    assert p.status.phase == Phase.RESTARTING and p.status.restarts == 0


def test_no_free_node_is_a_condition_not_a_silent_hang() -> None:
    restarting = {
        "conditions": [
            {
                "type": "Restarting",
                "status": "True",
                "reason": "NodeLost",
                "message": "",
                "lastTransitionTime": to_rfc3339(NOW),
            }
        ],
        "phase": "Restarting",
        "restartGeneration": 1,
    }
    stuck = worker(1, "Pending", gen=1, node="", unschedulable="0/4 nodes are available")
    pods = [worker(0, gen=1), stuck, worker(2, gen=1), worker(3, gen=1)]
    p = plan(job({}, restarting), pods, NOW)
    c = cond(p, "Restarting")
    assert c.status == "True" and c.reason == "NoFeasibleNode" and "0/4 nodes" in c.message
    assert any(e.reason == "NoFeasibleNode" for e in p.events)


def test_restarting_clears_when_the_world_runs_again() -> None:
    restarting = {
        "conditions": [
            {
                "type": "Restarting",
                "status": "True",
                "reason": "Error",
                "message": "",
                "lastTransitionTime": to_rfc3339(NOW),
            }
        ],
        "phase": "Restarting",
        "restartGeneration": 1,
    }
    pods = [worker(i, gen=1) for i in range(4)]
    p = plan(job({}, restarting), pods, NOW)
    assert p.status.phase == Phase.RUNNING
    assert cond(p, "Restarting").status == "False" and cond(p, "Restarting").reason == "Recovered"


def ready_for(seconds: float) -> dict[str, Any]:
    return {
        "type": "Ready",
        "status": "True",
        "reason": "AllWorkersReady",
        "message": "",
        "lastTransitionTime": to_rfc3339(NOW - timedelta(seconds=seconds)),
    }


def test_stall_restarts_the_world_after_the_timeout() -> None:
    status = {"conditions": [ready_for(100)]}
    stuck = Progress(42, NOW - timedelta(seconds=61), NOW)  # the stall clock's reads
    pods = [worker(i) for i in range(4)]
    policy = {"backoffSeconds": 0, "stallTimeoutSeconds": 60}
    p = plan(job(policy, status), pods, NOW, Signals(progress=stuck))
    assert p.status.last_failure is not None and p.status.last_failure.reason == "Stalled"
    assert "stuck at 42 for more than 60s" in p.status.last_failure.message
    assert p.status.restart_generation == 1


def test_stall_is_decided_from_the_clock_not_from_an_old_status_progress() -> None:
    # status.progress is written at most every few minutes: a pass must not read its age
    # as a stall while the clock in memory sees the step moving.
    old = {"step": 42, "time": to_rfc3339(NOW - timedelta(seconds=500))}
    status = {"conditions": [ready_for(1000)], "progress": old}
    moving = Progress(97, NOW - timedelta(seconds=2), NOW)
    policy = {"backoffSeconds": 0, "stallTimeoutSeconds": 60}
    pods = [worker(i) for i in range(4)]
    p = plan(job(policy, status), pods, NOW, Signals(progress=moving))
    assert p.status.last_failure is None and p.status.restart_generation == 0
    # Not read yet since a start-up: no stall either.
    p = plan(job(policy, status), pods, NOW, Signals())
    assert p.status.last_failure is None


def test_a_new_world_gets_a_full_stall_timeout() -> None:
    stuck = Progress(42, NOW - timedelta(seconds=600), NOW)  # unchanged across a restart
    policy = {"backoffSeconds": 0, "stallTimeoutSeconds": 60}
    pods = [worker(i) for i in range(4)]
    p = plan(job(policy, {"conditions": [ready_for(30)]}), pods, NOW, Signals(progress=stuck))
    assert p.status.last_failure is None
    p = plan(job(policy, {"conditions": [ready_for(61)]}), pods, NOW, Signals(progress=stuck))
    assert p.status.last_failure is not None and p.status.last_failure.reason == "Stalled"


def test_a_vanished_worker_is_not_recreated_alone_during_the_backoff() -> None:
    gone = Failure(FailureReason.EVICTED, NOW, "j-worker-1", "n0", 1, None, "deleted")
    pods = [worker(0), worker(2), worker(3)]
    p = plan(job({"backoffSeconds": 10}), pods, NOW, Signals(gone=[gone]))
    assert p.create == [] and p.status.phase == Phase.RESTARTING
    p = plan(job({"backoffSeconds": 10}), pods, NOW + timedelta(seconds=11), Signals(gone=[gone]))
    assert p.status.restart_generation == 1  # the whole world, together


def test_failing_the_job_ends_the_restarting_condition() -> None:
    waiting = {
        "conditions": [
            {
                "type": "Restarting",
                "status": "True",
                "reason": "Error",
                "message": "",
                "lastTransitionTime": to_rfc3339(NOW),
            }
        ]
    }
    rules = [{"exitCodes": [2], "action": "Fail"}]
    pods = [worker(0), worker(1, "Failed", exit_code=2, reason="Error"), worker(2), worker(3)]
    p = plan(job({"rules": rules}, waiting), pods, NOW)
    assert p.status.phase == Phase.FAILED
    assert cond(p, "Restarting").status == "False"
    assert cond(p, "Failed").reason == "FailurePolicyRule"


def test_recreate_failed_records_the_pods_it_replaces_in_its_intent() -> None:
    from gaudi_operator.jobs.reconciler import INTENT_FIELDS, intent_patch

    pods = [worker(0), worker(1), failed(2), worker(3)]
    policy = {"backoffSeconds": 0, "restartStrategy": "RecreateFailed"}
    before = job(policy).status
    p = plan(job(policy), pods, NOW)
    assert p.status.replaced_pods == ["u2-0"]
    intent = intent_patch(dict(before), p.status.to_dict())
    assert set(intent) <= set(INTENT_FIELDS)
    assert intent["replacedPods"] == ["u2-0"] and intent["restarts"] == 1


def test_recreate_failed_after_a_crash_between_intent_and_delete_counts_once() -> None:
    # The intent of restart 1 is written; the operator died before deleting worker 2.
    policy = {"backoffSeconds": 0, "restartStrategy": "RecreateFailed"}
    pods = [worker(0), worker(1), failed(2), worker(3)]
    first = plan(job(policy), pods, NOW)
    committed = {k: v for k, v in first.status.to_dict().items() if k != "conditions"}
    again = plan(job(policy, committed), pods, NOW + timedelta(seconds=30))
    assert again.status.restarts == 1, "the restart was counted twice"
    assert [w.name for w in again.delete] == ["j-worker-2"]  # the restart is finished
    assert again.failover is not None and not again.failover.new_failures
    assert cond(again, "Restarting").status == "True"
    assert [e.reason for e in again.events] == ["RestartingWorkers"]
    # A new failure meanwhile is its own restart, counted once more.
    both = [worker(0), failed(1), failed(2), worker(3)]
    later = plan(job(policy, committed), both, NOW + timedelta(seconds=30))
    assert later.status.restarts == 2
    assert sorted(w.name for w in later.delete) == ["j-worker-1", "j-worker-2"]
    assert later.status.replaced_pods == ["u1-0", "u2-0"]


def test_the_record_of_replaced_pods_goes_once_the_world_runs_again() -> None:
    policy = {"backoffSeconds": 0, "restartStrategy": "RecreateFailed"}
    pods = [worker(0), worker(1), failed(2), worker(3)]
    first = plan(job(policy), pods, NOW)
    assert first.status.replaced_pods
    healed = [worker(0), worker(1), worker(2, gen=0), worker(3)]
    done = plan(job(policy, first.status.to_dict()), healed, NOW + timedelta(seconds=30))
    assert done.status.phase == Phase.RUNNING
    assert done.status.replaced_pods is None
