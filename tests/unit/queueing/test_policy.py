"""Kueue admission decided purely: the Workload a job gets, and what the job and its
Workload should look like for each state Kueue can put the Workload in."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from gaudi_operator import api
from gaudi_operator.api import GaudiTrainingJobSpec, GaudiTrainingJobStatus, Phase
from gaudi_operator.jobs.manifests import JobRef
from gaudi_operator.jobs.observation import JobView, WorkerPod
from gaudi_operator.jobs.plan import plan
from gaudi_operator.queueing import policy
from gaudi_operator.queueing.policy import JobFacts, Priority, decide, read_workload

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
UID = "0123456789abcdef"
WL = policy.workload_name("train", UID)


def spec(**kw: Any) -> GaudiTrainingJobSpec:
    raw = {
        "image": "img",
        "hpusPerWorker": 4,
        "workers": {"replicas": 2},
        "scheduling": {"queue": "team-a"},
        **kw,
    }
    return GaudiTrainingJobSpec.model_validate(raw)


def status(
    queued: tuple[str, str, str] | None = None, phase: str = "Pending"
) -> GaudiTrainingJobStatus:
    s = GaudiTrainingJobStatus.model_validate({"phase": phase})
    if queued is not None:
        s.conditions = api.set_condition(
            s.conditions, policy.QUEUED, queued[0] == "True", queued[1], queued[2], NOW
        )
    return s


def facts(
    s: GaudiTrainingJobSpec, st: GaudiTrainingJobStatus | None = None, live: int = 0
) -> JobFacts:
    return JobFacts("train", "ns", UID, 1, s, st or status(), live)


def workload(
    *conditions: tuple[str, str, str],
    count: int = 2,
    hpus: int = 4,
    queue: str = "team-a",
    admitted_to: str | None = None,
    owner: str = UID,
) -> policy.WorkloadView:
    obj = policy.workload_manifest(
        spec(workers={"replicas": count}, hpusPerWorker=hpus, scheduling={"queue": queue}),
        JobRef("train", "ns", owner),
    )
    obj["metadata"]["resourceVersion"] = "7"
    obj["status"] = {
        "conditions": [
            {"type": t, "status": s, "reason": r, "message": f"{t} {r}"} for t, s, r in conditions
        ],
    }
    if admitted_to:
        obj["status"]["admission"] = {"clusterQueue": admitted_to, "podSetAssignments": []}
    return read_workload(obj)


ADMITTED = (("QuotaReserved", "True", "QuotaReserved"), ("Admitted", "True", "Admitted"))


# --- the Workload ----------------------------------------------------------------------------


def test_workload_is_one_pod_set_of_every_worker_with_the_worker_requests() -> None:
    wl = policy.workload_manifest(spec(), JobRef("train", "ns", UID))
    assert wl["apiVersion"] == "kueue.x-k8s.io/v1beta2" and wl["kind"] == "Workload"
    assert wl["metadata"]["name"] == WL
    assert wl["metadata"]["ownerReferences"][0]["uid"] == UID
    assert wl["metadata"]["ownerReferences"][0]["controller"] is True
    assert wl["spec"]["queueName"] == "team-a"
    (ps,) = wl["spec"]["podSets"]
    assert ps["name"] == "workers" and ps["count"] == 2
    (c,) = ps["template"]["spec"]["containers"]
    assert c["resources"]["requests"][api.GAUDI_RESOURCE] == 4
    assert "hugepages-2Mi" in c["resources"]["requests"]
    assert "env" not in c
    assert "priority" not in wl["spec"]
    assert wl["metadata"]["finalizers"] == [policy.FINALIZER]
    assert wl["metadata"]["labels"]["kueue.x-k8s.io/job-uid"] == UID


def test_workload_carries_the_resolved_priority() -> None:
    wl = policy.workload_manifest(
        spec(), JobRef("train", "ns", UID), Priority("WorkloadPriorityClass", "urgent", 1000)
    )
    assert wl["spec"]["priority"] == 1000
    assert wl["spec"]["priorityClassRef"] == {
        "group": "kueue.x-k8s.io",
        "kind": "WorkloadPriorityClass",
        "name": "urgent",
    }


def test_a_volcano_queue_is_not_a_kueue_queue() -> None:
    assert policy.managed(spec())
    assert not policy.managed(
        spec(scheduling={"queue": "q", "gang": True, "schedulerName": "volcano"})
    )
    assert not policy.managed(spec(scheduling={}))


# --- holding a job in the jobs plan ----------------------------------------------------------


def test_a_queued_job_is_held_before_the_operator_has_seen_it() -> None:
    held = policy.suspension(spec(), status())
    assert held is not None and held[0] == "Queued" and "team-a" in held[1]


def test_a_queued_job_is_held_while_kueue_says_it_waits() -> None:
    held = policy.suspension(spec(), status(("True", "Pending", "insufficient quota")))
    assert held is not None and "insufficient quota" in held[1]


def test_an_admitted_job_is_held_only_by_spec_suspend() -> None:
    admitted = status(("False", "Admitted", "admitted"))
    assert policy.suspension(spec(), admitted) is None
    assert policy.suspension(spec(suspend=True), admitted) == (
        "Suspended",
        "spec.suspend is true: workers deleted, the job is kept",
    )


def test_the_jobs_plan_creates_no_worker_for_a_job_waiting_in_its_queue() -> None:
    view = JobView("train", "ns", UID, 1, spec().model_dump(by_alias=True), {})
    p = plan(view, [], NOW)
    assert p.create == [] and p.status.phase == Phase.SUSPENDED
    cond = api.get_condition(p.status.conditions, "Suspended")
    assert cond is not None and cond.reason == "Queued"
    admitted = {"conditions": [c.to_dict() for c in status(("False", "Admitted", "ok")).conditions]}
    view = JobView("train", "ns", UID, 1, spec().model_dump(by_alias=True), admitted)
    assert plan(view, [], NOW).create == [0, 1]


def test_the_jobs_plan_deletes_the_workers_of_an_evicted_job() -> None:
    st = {
        "phase": "Running",
        "conditions": [
            c.to_dict() for c in status(("True", "Preempted", "by a higher priority")).conditions
        ],
    }
    view = JobView("train", "ns", UID, 1, spec(suspend=True).model_dump(by_alias=True), st)
    pods = [
        WorkerPod(
            f"train-worker-{i}", uid=str(i), owner_uid=UID, index=i, generation=0, phase="Running"
        )
        for i in range(2)
    ]
    p = plan(view, pods, NOW)
    assert sorted(x.name for x in p.delete) == ["train-worker-0", "train-worker-1"]


# --- the decision ----------------------------------------------------------------------------


def test_first_pass_creates_the_workload_and_suspends_the_job() -> None:
    d = decide(facts(spec()), None, NOW)
    assert d.create is not None and d.create["metadata"]["name"] == WL
    assert d.suspend is True
    assert d.queued is not None and d.queued[:2] == (True, "Pending")


def test_a_pending_workload_keeps_the_job_suspended_and_says_why_in_kueues_words() -> None:
    wl = workload(("QuotaReserved", "False", "Pending"))
    d = decide(facts(spec(suspend=True)), wl, NOW)
    assert d.create is None and d.suspend is None
    assert d.queued == (True, "Pending", "QuotaReserved Pending")


def test_admission_unsuspends_the_job() -> None:
    d = decide(
        facts(spec(suspend=True), status(("True", "Pending", "x"))),
        workload(*ADMITTED, admitted_to="cq"),
        NOW,
    )
    assert d.suspend is False
    assert d.queued is not None and d.queued[:2] == (False, "Admitted") and "cq" in d.queued[2]
    assert ("Normal", "Admitted", d.queued[2]) in d.events


def test_an_admitted_job_is_kept_running_even_if_someone_suspends_it() -> None:
    # As with Kueue's own integrations: stop a queued job through its Workload (active).
    d = decide(
        facts(spec(suspend=True), status(("False", "Admitted", "x"))),
        workload(*ADMITTED, admitted_to="cq"),
        NOW,
    )
    assert d.suspend is False


def test_preemption_suspends_the_job_and_keeps_the_quota_while_workers_remain() -> None:
    wl = workload(*ADMITTED, ("Evicted", "True", "Preempted"), admitted_to="cq")
    d = decide(facts(spec(), status(("False", "Admitted", "x")), live=2), wl, NOW)
    assert d.suspend is True
    assert d.queued is not None and d.queued[:2] == (True, "Preempted")
    assert d.workload_status is None


def test_preemption_hands_the_quota_back_once_the_workers_are_gone() -> None:
    wl = workload(*ADMITTED, ("Evicted", "True", "Preempted"), admitted_to="cq")
    d = decide(facts(spec(suspend=True), status(("True", "Preempted", "x")), live=0), wl, NOW)
    assert d.workload_status is not None
    assert d.workload_status["admission"] is None
    conds = {c["type"]: c for c in d.workload_status["conditions"]}
    assert conds["QuotaReserved"]["status"] == "False"
    assert conds["Admitted"]["status"] == "False"
    assert conds["Requeued"]["status"] == "True"
    assert conds["Evicted"]["status"] == "True"  # Kueue resets it on the next admission


def test_a_deactivated_workload_is_not_requeued() -> None:
    wl = workload(*ADMITTED, ("Evicted", "True", "Deactivated"), admitted_to="cq")
    d = decide(facts(spec(suspend=True), live=0), wl, NOW)
    assert d.workload_status is not None
    conds = {c["type"]: c for c in d.workload_status["conditions"]}
    assert conds["Requeued"]["status"] == "False"


def test_a_finished_job_finishes_its_workload_so_kueue_releases_the_quota() -> None:
    wl = workload(*ADMITTED, admitted_to="cq")
    d = decide(facts(spec(), status(phase="Succeeded")), wl, NOW)
    assert d.workload_status is not None
    fin = next(c for c in d.workload_status["conditions"] if c["type"] == "Finished")
    assert fin["status"] == "True" and fin["reason"] == "Succeeded"
    assert d.suspend is None
    done = workload(*ADMITTED, ("Finished", "True", "Succeeded"), admitted_to="cq")
    assert decide(facts(spec(), status(phase="Failed")), done, NOW).workload_status is None


def test_a_resized_job_gets_a_new_workload() -> None:
    wl = workload(*ADMITTED, count=2, admitted_to="cq")
    d = decide(facts(spec(workers={"replicas": 3})), wl, NOW)
    assert d.delete == WL and d.suspend is True
    assert d.queued is not None and d.queued[1] == "Requeued" and "workers 2 -> 3" in d.queued[2]


def test_a_workload_of_an_earlier_job_with_the_same_name_is_not_ours() -> None:
    old = workload(*ADMITTED, admitted_to="cq", owner="ffffffffffffffff")
    d = decide(facts(spec()), old, NOW)
    assert d.create is not None and d.suspend is True


def test_clearing_the_queue_drops_the_workload_and_the_hold() -> None:
    wl = workload(("QuotaReserved", "False", "Pending"))
    d = decide(facts(spec(scheduling={}), status(("True", "Pending", "x"))), wl, NOW)
    assert d.delete == WL
    assert d.queued is not None and d.queued[0] is False


def test_a_deleted_workload_keeps_its_quota_until_the_last_worker_is_gone() -> None:
    obj = policy.workload_manifest(spec(), JobRef("train", "ns", UID))
    obj["metadata"]["finalizers"] = ["other.example.com/keep", policy.FINALIZER]
    assert policy.releasable(read_workload(obj), live_workers=0) is None  # not deleted
    obj["metadata"]["deletionTimestamp"] = "2026-01-01T12:00:00Z"
    assert policy.releasable(read_workload(obj), live_workers=1) is None
    assert policy.releasable(read_workload(obj), live_workers=0) == ["other.example.com/keep"]


def test_a_job_whose_workload_is_being_deleted_is_held_and_gets_no_second_one() -> None:
    obj = policy.workload_manifest(spec(), JobRef("train", "ns", UID))
    obj["metadata"]["deletionTimestamp"] = "2026-01-01T12:00:00Z"
    d = decide(facts(spec(), status(("False", "Admitted", "x")), live=2), read_workload(obj), NOW)
    assert d.create is None and d.suspend is True
