"""The conditions GitOps tools read (kstatus, as Flux computes it; `kubectl wait`): Ready,
Reconciling and Stalled, with observedGeneration on the status and on every condition."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gaudi_operator.api import Phase
from gaudi_operator.jobs.observation import JobView, WorkerPod
from gaudi_operator.jobs.plan import Plan, plan

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
GEN = 7


def job(
    spec: dict[str, Any] | None = None,
    status: dict[str, Any] | None = None,
    generation: int = GEN,
) -> JobView:
    return JobView(
        name="j",
        namespace="ns",
        uid="u",
        generation=generation,
        spec={"image": "img", "workers": {"replicas": 2}, **(spec or {})},
        status=status or {},
    )


def worker(i: int, phase: str = "Running", gen: int = 0, **kw: Any) -> WorkerPod:
    return WorkerPod(
        name=f"j-worker-{i}",
        uid=f"u{i}",
        index=i,
        generation=gen,
        owner_uid=kw.pop("owner_uid", "u"),  # the job's own: controlled by its uid
        phase=phase,
        ready=phase == "Running",
        node=kw.pop("node", "n0"),
        **kw,
    )


def cond(p: Plan, type_: str) -> Any:
    return next((c for c in p.status.conditions if c.type == type_), None)


def is_true(p: Plan, type_: str) -> bool:
    c = cond(p, type_)
    return c is not None and c.status == "True"


def then(p: Plan, pods: list[WorkerPod], **spec: Any) -> Plan:
    """The next pass, reading back the status this one wrote."""
    return plan(job(spec=spec or None, status=p.status.to_dict()), pods, NOW + timedelta(1))


def running() -> Plan:
    return plan(job(), [worker(0), worker(1)], NOW)


def test_a_new_job_is_reconciling_and_not_ready() -> None:
    p = plan(job(), [], NOW)
    assert p.status.phase == Phase.PENDING
    assert cond(p, "Reconciling").reason == "Pending"
    assert is_true(p, "Reconciling") and not is_true(p, "Ready")
    assert cond(p, "Stalled") is None  # abnormal-true: absent until it happens


@pytest.mark.parametrize(
    ("pods", "status", "phase"),
    [
        ([worker(0, "Pending"), worker(1, "Pending")], {}, Phase.STARTING),
        ([worker(0), worker(1), worker(2)], {"phase": "Running"}, Phase.SCALING),
        ([worker(0, gen=0), worker(1, gen=0)], {"restartGeneration": 1}, Phase.RESTARTING),
    ],
)
def test_every_converging_phase_is_reconciling_under_its_own_name(
    pods: list[WorkerPod], status: dict[str, Any], phase: Phase
) -> None:
    p = plan(job(status=status), pods, NOW)
    assert p.status.phase == phase
    assert is_true(p, "Reconciling") and cond(p, "Reconciling").reason == phase.value
    assert not is_true(p, "Stalled")


def test_a_running_job_is_ready_and_stops_reconciling() -> None:
    starting = plan(job(), [worker(0, "Pending"), worker(1, "Pending")], NOW)
    p = then(starting, [worker(0), worker(1)])
    assert p.status.phase == Phase.RUNNING
    assert is_true(p, "Ready")
    assert cond(p, "Reconciling").status == "False"  # was True: now set False, not dropped
    assert cond(p, "Stalled") is None


def test_status_and_every_condition_carry_the_observed_generation() -> None:
    for p in (plan(job(), [], NOW), running(), plan(job({"image": ""}), [], NOW)):
        assert p.status.observed_generation == GEN
        assert p.status.conditions
        assert {c.observed_generation for c in p.status.conditions} == {GEN}


def test_a_restart_waiting_out_its_backoff_is_reconciling_with_the_reason() -> None:
    failed = worker(1, "Failed", exit_code=1, reason="Error", finished_at=NOW)
    p = plan(
        job({"failurePolicy": {"backoffSeconds": 30}}, {"phase": "Running"}),
        [worker(0), failed],
        NOW + timedelta(seconds=1),
    )
    assert p.status.phase == Phase.RESTARTING
    assert is_true(p, "Reconciling") and "backoff" in cond(p, "Reconciling").message
    assert not is_true(p, "Stalled")


def test_a_restart_no_node_can_take_is_stalled_not_reconciling() -> None:
    status = {
        "phase": "Restarting",
        "restartGeneration": 1,
        "conditions": [
            {"type": "Reconciling", "status": "True", "reason": "Restarting"},
            {"type": "Restarting", "status": "True", "reason": "NodeLost", "message": ""},
        ],
    }
    stuck = worker(1, "Pending", gen=1, node="", unschedulable="0/4 nodes are available")
    p = plan(job(status=status), [worker(0, gen=1), stuck], NOW)
    assert cond(p, "Restarting").reason == "NoFeasibleNode"
    stalled = cond(p, "Stalled")
    assert stalled.status == "True" and stalled.reason == "NoFeasibleNode"
    assert "0/4 nodes" in stalled.message
    assert cond(p, "Reconciling").status == "False"
    # Capacity came back: the world runs again, nothing is stalled any more.
    healed = then(p, [worker(0, gen=1), worker(1, gen=1)])
    assert healed.status.phase == Phase.RUNNING
    assert cond(healed, "Stalled").status == "False" and is_true(healed, "Ready")


def test_a_failed_job_is_stalled_with_the_failure_reason() -> None:
    p = plan(job({"runPolicy": {"activeDeadlineSeconds": 10}}), [], NOW)
    p = plan(
        job({"runPolicy": {"activeDeadlineSeconds": 10}}, p.status.to_dict()),
        [worker(0), worker(1)],
        NOW + timedelta(seconds=11),
    )
    assert p.status.phase == Phase.FAILED
    stalled = cond(p, "Stalled")
    assert stalled.status == "True" and stalled.reason == "DeadlineExceeded"
    assert cond(p, "Reconciling").status == "False"
    assert not is_true(p, "Ready")
    # Finished passes keep saying so.
    assert is_true(then(p, []), "Stalled")


def test_a_succeeded_job_is_ready_and_neither_reconciling_nor_stalled() -> None:
    p = then(running(), [worker(0, "Succeeded"), worker(1, "Succeeded")])
    assert p.status.phase == Phase.SUCCEEDED
    ready = cond(p, "Ready")
    assert ready.status == "True" and ready.reason == "Succeeded"
    assert not is_true(p, "Reconciling") and not is_true(p, "Stalled")
    assert is_true(then(p, []), "Ready")  # and stays so


def test_a_suspended_job_has_no_ready_condition_and_is_not_reconciling() -> None:
    p = then(running(), [worker(0), worker(1)], suspend=True)
    assert p.status.phase == Phase.SUSPENDED
    assert cond(p, "Ready") is None  # neither ready nor converging: see lifecycle._suspended
    assert not is_true(p, "Reconciling") and not is_true(p, "Stalled")
    assert is_true(p, "Suspended")
    resumed = then(p, [])
    assert is_true(resumed, "Reconciling") and cond(resumed, "Ready").status == "False"


def test_an_invalid_spec_is_stalled_and_a_ready_job_stops_being_ready() -> None:
    p = then(running(), [worker(0), worker(1)], image="")
    assert is_true(p, "InvalidSpec")
    stalled = cond(p, "Stalled")
    assert stalled.status == "True" and stalled.reason == "InvalidSpec"
    assert "spec.image" in stalled.message
    assert cond(p, "Ready").status == "False" and cond(p, "Ready").reason == "InvalidSpec"
    fixed = then(p, [worker(0), worker(1)])
    assert cond(fixed, "Stalled").status == "False" and is_true(fixed, "Ready")


def test_worker_pods_the_api_server_refuses_stall_the_job() -> None:
    # The reconciler writes InvalidSpec/PodRejected when a create is refused; the next
    # pass turns it into Stalled while the generation is unchanged.
    rejected = {
        "type": "InvalidSpec",
        "status": "True",
        "reason": "PodRejected",
        "message": "worker pods are rejected by the API server",
        "observedGeneration": GEN,
    }
    p = plan(job(status={"conditions": [rejected]}), [], NOW)
    assert is_true(p, "Stalled") and cond(p, "Stalled").reason == "PodRejected"
    assert not is_true(p, "Reconciling")


def test_reconciling_and_stalled_are_never_true_together() -> None:
    # kstatus takes the first True one in list order: both True would be ambiguous.
    failed = worker(1, "Failed", exit_code=1, reason="Error", finished_at=NOW)
    passes = [
        plan(job(), [], NOW),
        running(),
        plan(job({"image": ""}), [], NOW),
        plan(job({"failurePolicy": {"maxRestarts": 0}}), [worker(0), failed], NOW),
        plan(job({"failurePolicy": {"backoffSeconds": 30}}), [worker(0), failed], NOW),
        plan(job({"suspend": True}), [], NOW),
    ]
    for p in passes:
        assert not (is_true(p, "Reconciling") and is_true(p, "Stalled")), p.status.phase


def test_a_deleting_job_gets_no_new_conditions() -> None:
    j = JobView(
        name="j",
        namespace="ns",
        uid="u",
        generation=GEN,
        spec={"image": "img"},
        status={"phase": "Running"},
        deleting=True,
    )
    assert plan(j, [], NOW).status.conditions == []
