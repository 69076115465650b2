"""The reconciler's writes against a fake API server (tests/unit/fake_api.py), driven
through the controller with a pod index that lags or catches up as a test says: nothing
POSTed twice, status written only on change, events after the status write that decides
them, a quota refusal told once, the write floor of a job on its way to Running."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from gaudi_operator import api
from gaudi_operator.observability import metrics
from unit.fake_api import api_error
from unit.fake_world import NS, World, running, scheduled

pytestmark = pytest.mark.unit

PLURAL = api.PLURAL


def condition(job: dict[str, Any], type_: str) -> dict[str, Any] | None:
    conds = (job.get("status") or {}).get("conditions") or []
    return next((c for c in conds if c["type"] == type_), None)


# --- nothing twice -----------------------------------------------------------------------


def test_a_pass_on_a_lagging_pod_index_never_creates_a_pod_again() -> None:
    w = World("lagging", {"workers": {"replicas": 4}})
    w.pass_()
    assert w.api.requests[("POST", "pods")] == 4
    # The job watch shows our status write; the pod watch has shown nothing yet.
    w.jobs[w.key] = [copy.deepcopy(w.job)]
    for _ in range(3):
        w.pass_()
    assert w.api.requests[("POST", "pods")] == 4, "a pass created pods it had created already"
    assert w.api.requests[("PATCH", PLURAL + "/status")] == 1, "status from stale counts"
    w.catch_up()
    w.pass_()
    assert w.api.requests[("POST", "pods")] == 4
    w.forget()


def test_a_pass_that_changes_nothing_writes_no_status() -> None:
    w = World("steady", {"workers": {"replicas": 2}})
    w.pass_()
    w.catch_up()
    w.each_pod(running)
    w.catch_up()
    w.pass_()
    assert w.job["status"]["phase"] == "Running"
    before = w.api.writes()
    for _ in range(3):  # resyncs, duplicate events
        w.catch_up()
        w.pass_()
    assert w.api.writes() == before, f"{w.api.requests}"
    w.forget()


def test_the_pod_group_is_created_only_when_missing() -> None:
    spec = {
        "workers": {"replicas": 2},
        "scheduling": {"gang": True, "schedulerName": "scheduler-plugins-scheduler"},
    }
    w = World("gang", spec)
    for _ in range(3):
        w.catch_up()
        w.pass_()
    assert w.api.requests[("POST", "podgroups")] == 1
    assert w.api.requests[("GET", "podgroups")] == 1
    w.forget()


# --- events after the status write that decides them --------------------------------------


def conflicting_once(w: World) -> Callable[[str, str, Any], Any]:
    """The next status write of the reconciler conflicts: someone changed the reconciler's
    own part of the status (as our own earlier write the index does not show yet would)."""
    armed = [True]

    def fault(verb: str, resource: str, body: Any) -> Any:
        if armed[0] and verb == "PATCH" and resource.endswith("/status"):
            patch = body.get("status") or {}
            if set(patch) <= {"restartGeneration", "restarts", "lastFailure", "excludedNodes"}:
                return None  # the intent commit goes through
            armed[0] = False
            job = w.api.get(PLURAL, NS, w.name)
            job["status"]["observedGeneration"] = 99
            job["metadata"]["resourceVersion"] += "0"
            return api_error(409, "the object has been modified")
        return None

    return fault


def failed(pod: dict[str, Any]) -> None:
    if pod["metadata"]["name"].endswith("-1"):
        pod["status"]["phase"] = "Failed"
        pod["status"]["containerStatuses"] = [
            {"name": api.WORKER_CONTAINER, "state": {"terminated": {"exitCode": 1}}}
        ]


def test_a_pass_whose_status_write_conflicts_posts_no_event_and_its_retry_posts_it_once() -> None:
    w = World("told-once", {"workers": {"replicas": 2}, "failurePolicy": {"backoffSeconds": 60}})
    w.pass_()
    w.catch_up()
    w.each_pod(running)
    w.catch_up()
    w.pass_()
    w.each_pod(failed)
    w.catch_up()
    w.api.fault = conflicting_once(w)
    w.pass_()  # decides the failure (backoff: WorkerFailed, RestartBackoff), write conflicts
    assert "WorkerFailed" not in w.reasons()
    w.catch_up()
    w.pass_()  # decides again from a fresh view, writes, tells
    w.catch_up()
    w.pass_()
    assert w.reasons().count("WorkerFailed") == 1
    assert w.reasons().count("RestartBackoff") == 1
    assert w.job["status"]["lastFailure"]["pod"] == "told-once-worker-1"
    w.forget()


def restarts_counted(strategy: str) -> float:
    for m in metrics.RESTARTS.collect():
        for s in m.samples:
            if s.name.endswith("_total") and s.labels["strategy"] == strategy:
                return s.value
    return 0.0


def test_a_committed_restart_is_told_and_counted_though_the_status_write_after_it_conflicts() -> (
    None
):
    w = World("committed", {"workers": {"replicas": 2}, "failurePolicy": {"backoffSeconds": 0}})
    w.pass_()
    w.catch_up()
    w.each_pod(running)
    w.catch_up()
    w.pass_()
    w.each_pod(failed)
    w.catch_up()
    counted = restarts_counted("RecreateAll")
    w.api.fault = conflicting_once(w)
    w.pass_()  # the intent commits (restart 1, generation 1), the status write conflicts
    assert w.job["status"]["restarts"] == 1
    assert restarts_counted("RecreateAll") == counted + 1
    for _ in range(3):
        w.catch_up()
        w.pass_()
    assert w.reasons().count("RestartingWorkers") == 1
    assert w.reasons().count("WorkerFailed") == 1
    assert restarts_counted("RecreateAll") == counted + 1
    assert w.job["status"]["restarts"] == 1
    w.forget()


# --- quota ---------------------------------------------------------------------------------

QUOTA = (
    'pods "quota-worker-1" is forbidden: exceeded quota: hpus, requested: '
    "requests.habana.ai/gaudi=1, used: requests.habana.ai/gaudi=1, limited: "
    "requests.habana.ai/gaudi=1"
)


def test_a_quota_refusal_is_a_condition_and_one_event_with_backoff() -> None:
    w = World("quota", {"workers": {"replicas": 2}})
    allowed = [1]

    def quota(verb: str, resource: str, body: Any) -> Any:
        if verb == "POST" and resource == "pods":
            if allowed[0] <= 0:
                return api_error(403, QUOTA)
            allowed[0] -= 1
        return None

    w.api.fault = quota
    w.pass_()
    created = condition(w.job, "Created")
    assert created is not None and created["status"] == "False"
    assert created["reason"] == "QuotaExceeded" and "exceeded quota: hpus" in created["message"]
    assert w.reasons("Warning") == ["QuotaExceeded"]
    w.catch_up()
    w.pass_()  # the one worker the quota let through is counted
    posts, writes = w.api.requests[("POST", "pods")], w.api.writes(PLURAL + "/status")
    for _ in range(20):  # resyncs and events, 1 s apart: the backoff holds creation
        w.clock.advance(1)
        w.catch_up()
        w.pass_()
        assert w.scheduled == 1, "a held creation must come back by itself"
    assert w.api.requests[("POST", "pods")] < posts + 5, "no backoff"
    assert w.api.requests[("POST", "pods")] > posts, "never tried again"
    assert w.reasons("Warning") == ["QuotaExceeded"], "one event, not one per pass"
    assert w.api.writes(PLURAL + "/status") == writes
    allowed[0] = 1  # the quota frees up
    w.clock.advance(300)
    w.catch_up()
    w.pass_()
    w.catch_up()
    w.pass_()
    created = condition(w.job, "Created")
    assert created is not None and created["status"] == "True"
    w.forget()


# --- the write floor -----------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 4])
def test_create_to_running_costs_at_most_n_plus_4_writes(workers: int) -> None:
    w = World(f"floor-{workers}", {"workers": {"replicas": workers}}, debounce=5.0)
    for step in (None, scheduled, running):
        if step is not None:
            w.each_pod(step)
        w.catch_up()
        w.pass_()
        w.clock.advance(0.5)
    job = w.job
    assert job["status"]["phase"] == "Running"
    status_writes = w.api.writes(PLURAL + "/status")
    normal = w.reasons("Normal")
    print(f"{workers} workers: {dict(w.api.requests)}")
    assert w.api.requests[("POST", "pods")] == workers
    assert w.api.requests[("POST", "services")] == (1 if workers > 1 else 0)
    assert status_writes <= 2, w.api.requests
    assert normal == ["CreatedWorkers"]
    assert w.api.writes() <= workers + 4
    w.forget()


def test_a_job_whose_workers_run_within_the_first_hold_costs_one_status_write() -> None:
    w = World("quick", {"workers": {"replicas": 2}}, debounce=30.0)
    w.pass_()
    assert "status" not in w.job  # the first status waits for the workers, 5 s at most
    for step in (scheduled, running):
        w.clock.advance(1)
        w.each_pod(step)
        w.catch_up()
        w.pass_()
    assert w.job["status"]["phase"] == "Running"
    assert w.api.writes(PLURAL + "/status") == 1
    created = condition(w.job, "Created")
    assert created is not None and created["status"] == "True"
    w.forget()


def test_a_job_s_first_status_is_written_within_five_seconds() -> None:
    w = World("slow-first", {"workers": {"replicas": 2}}, debounce=30.0)
    w.pass_()
    w.catch_up()
    w.pass_()
    assert "status" not in w.job
    w.clock.advance(5.1)
    w.catch_up()
    w.pass_()
    assert w.job["status"]["phase"] in ("Pending", "Starting")
    assert w.api.writes(PLURAL + "/status") == 1
    w.forget()


def test_progress_alone_is_written_after_the_debounce_when_nothing_else_comes() -> None:
    w = World("slow-start", {"workers": {"replicas": 2}}, debounce=30.0)
    w.pass_()
    w.catch_up()
    w.clock.advance(5.1)  # the first status goes out after its hold
    w.pass_()
    w.each_pod(scheduled)
    w.catch_up()
    w.pass_()
    assert w.job["status"]["phase"] == "Pending"  # Starting waits for the next change
    w.clock.advance(29)
    w.catch_up()
    w.pass_()
    assert w.job["status"]["phase"] == "Pending"
    assert w.scheduled == 1  # ... and comes back by itself when the wait is over
    w.clock.advance(1.1)
    w.catch_up()
    w.pass_()
    assert w.job["status"]["phase"] == "Starting"
    w.forget()


def unplaceable(pod: dict[str, Any]) -> None:
    pod["status"]["conditions"] = [
        {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": "0/4 nodes are available: 4 Insufficient habana.ai/gaudi.",
            "lastTransitionTime": "2026-05-01T12:00:00Z",
        }
    ]


def test_workers_that_cannot_be_placed_are_said_within_five_seconds() -> None:
    w = World("no-room", {"workers": {"replicas": 2}}, debounce=30.0)
    w.pass_()
    w.catch_up()
    w.each_pod(unplaceable)
    w.catch_up()
    w.pass_()
    assert condition(w.job, "Scheduled") is None
    w.clock.advance(5.1)
    w.catch_up()
    w.pass_()
    said = condition(w.job, "Scheduled")
    assert said is not None and said["status"] == "False"
    w.forget()


# --- a worker the API server cannot decode --------------------------------------------------

UNDECODABLE = (
    'Pod in version "v1" cannot be handled as a Pod: quantities must match the regular '
    "expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
)


def test_a_worker_the_api_server_cannot_decode_is_invalid_spec_not_a_retry_loop() -> None:
    """A quantity the CRD lets through as a string ("1.5.2" in a template container's
    resources) makes kube-apiserver answer 400, not 422: the template cannot be a pod
    either way, so the job says InvalidSpec once and nothing is retried (found by the spec
    fuzz, which drove the reconciler into an endless error backoff)."""
    w = World("undecodable", {"workers": {"replicas": 2}})

    def refuse(verb: str, resource: str, body: Any) -> Any:
        if verb == "POST" and resource == "pods":
            return api_error(400, UNDECODABLE)
        return None

    w.api.fault = refuse
    w.pass_()
    bad = condition(w.job, "InvalidSpec")
    assert bad is not None and bad["status"] == "True", w.job.get("status")
    assert bad["reason"] == "PodRejected" and "quantities must match" in bad["message"]
    assert "spec.template or spec.resources" in bad["message"]
    assert w.reasons("Warning") == ["InvalidSpec"]
    posts = w.api.requests[("POST", "pods")]
    for _ in range(3):  # resyncs: nothing more is tried until the spec changes
        w.clock.advance(30)
        w.catch_up()
        w.pass_()
    assert w.api.requests[("POST", "pods")] == posts
    assert w.reasons("Warning") == ["InvalidSpec"]
    w.forget()


# --- restartInPlace: the job's control token --------------------------------------------


def test_a_restart_in_place_job_gets_one_control_secret_and_keeps_it() -> None:
    w = World("inplace", {"workers": {"replicas": 2}, "failurePolicy": {"restartInPlace": True}})
    for _ in range(3):
        w.catch_up()
        w.pass_()
    name = api.control_secret_name("inplace")
    secret = w.api.get("secrets", NS, name)
    assert secret["data"][api.CONTROL_TOKEN_KEY], secret
    refs = secret["metadata"]["ownerReferences"]
    assert [r["uid"] for r in refs if r.get("controller")] == [w.job["metadata"]["uid"]]
    assert w.api.requests[("POST", "secrets")] == 1
    # A new operator (nothing remembered) reads the token back; it never makes another.
    w.reconciler._tokens.clear()
    w.pass_()
    assert w.api.requests[("POST", "secrets")] == 1
    assert w.api.requests[("GET", "secrets")] >= 1
    w.forget()


def test_a_predecessors_control_secret_is_replaced_not_reused() -> None:
    w = World("inplace", {"workers": {"replicas": 1}, "failurePolicy": {"restartInPlace": True}})
    name = api.control_secret_name("inplace")
    w.api.add(
        "secrets",
        {
            "metadata": {
                "name": name,
                "namespace": NS,
                "ownerReferences": [
                    {
                        "apiVersion": api.API_VERSION,
                        "kind": api.KIND,
                        "name": "inplace",
                        "uid": "an-earlier-job",
                        "controller": True,
                    }
                ],
            },
            "data": {api.CONTROL_TOKEN_KEY: "b2xk"},
        },
    )
    w.pass_()
    assert w.api.requests[("DELETE", "secrets")] == 1
    refs = w.api.get("secrets", NS, name)["metadata"]["ownerReferences"]
    assert [r["uid"] for r in refs] == [w.job["metadata"]["uid"]]
    w.forget()


# --- warm spares ------------------------------------------------------------------------------


def test_a_warm_spare_takes_a_deleted_worker_s_index_with_one_patch_expected_back() -> None:
    from gaudi_train import control_protocol as protocol
    from gaudi_train.control_protocol import LauncherStatus

    spec = {
        "workers": {"replicas": 2, "spares": 1},
        "failurePolicy": {"restartInPlace": True, "backoffSeconds": 0},
    }
    w = World("spares", spec)
    heard: dict[str, LauncherStatus] = {}
    w.reconciler.launchers.sync = lambda key, token, pods: dict(heard)  # type: ignore[method-assign]
    w.pass_()
    w.catch_up()
    w.each_pod(running)
    w.catch_up()
    w.pass_()  # Running: every worker has a node, so the pool starts
    assert w.api.requests[("POST", "pods")] == 3
    spare = w.api.get("pods", NS, "spares-spare-0")
    assert spare["metadata"]["labels"][api.LABEL_SPARE] == "true"
    w.catch_up()
    w.each_pod(running)
    heard["spares-spare-0"] = LauncherStatus(3, protocol.SPARE, 0, spare=True)
    w.catch_up()
    w.pass_()
    assert w.api.requests[("POST", "pods")] == 3 and w.api.requests[("PATCH", "pods")] == 0
    # Someone deletes worker 1: the spare takes index 1, no worker pod is POSTed.
    lost = w.api.get("pods", NS, "spares-worker-1")["metadata"]
    lost["deletionTimestamp"], gone_uid = "2026-01-01T00:00:00Z", lost["uid"]
    w.catch_up()
    w.pass_()
    assert w.api.requests[("PATCH", "pods")] == 1 and w.api.requests[("POST", "pods")] == 3
    labels = w.api.get("pods", NS, "spares-spare-0")["metadata"]["labels"]
    assert labels[api.LABEL_WORKER_INDEX] == "1" and api.LABEL_SPARE not in labels
    assert "SpareTookOver" in w.reasons()
    # The pod index still shows the spare: no pass runs until the watch shows the index.
    w.pass_()
    assert w.api.requests[("PATCH", "pods")] == 1
    w.controller.observe_pod(w.key, "spares-worker-1", gone_uid, True, gone=True)  # DELETED
    w.catch_up()
    w.pass_()  # the world re-forms with it (in place, not counted again), the pool refills
    assert w.job["status"]["inPlaceGeneration"] == 1 and w.job["status"]["restarts"] == 1
    assert w.api.requests[("PATCH", "pods")] == 1 and w.api.requests[("POST", "pods")] == 4
    assert w.api.get("pods", NS, "spares-spare-1")["metadata"]["labels"][api.LABEL_SPARE]
    w.forget()


def test_a_worker_created_while_a_former_spare_holds_index_0_finds_its_store() -> None:
    from gaudi_train import control_protocol as protocol
    from gaudi_train.control_protocol import LauncherStatus

    spec = {
        "workers": {"replicas": 2, "spares": 1},
        "failurePolicy": {
            "restartInPlace": True,
            "backoffSeconds": 0,
            "restartStrategy": "RecreateFailed",
        },
    }
    w = World("rdzv", spec)
    heard: dict[str, LauncherStatus] = {}
    w.reconciler.launchers.sync = lambda key, token, pods: dict(heard)  # type: ignore[method-assign]

    def up(pod: dict[str, Any]) -> None:
        running(pod)
        pod["status"]["podIP"] = "127.0.9." + str(len(pod["metadata"]["name"]))

    w.pass_()
    w.catch_up()
    w.each_pod(up)
    w.catch_up()
    w.pass_()  # the pool starts
    w.catch_up()
    w.each_pod(up)
    heard["rdzv-spare-0"] = LauncherStatus(3, protocol.SPARE, 0, spare=True)
    w.catch_up()
    # Worker 0 goes: the spare takes index 0 (and hosts the world's store on its IP).
    lost = w.api.get("pods", NS, "rdzv-worker-0")["metadata"]
    lost["deletionTimestamp"], uid0 = "2026-01-01T00:00:00Z", lost["uid"]
    w.catch_up()
    w.pass_()
    w.controller.observe_pod(w.key, "rdzv-worker-0", uid0, True, gone=True)
    heard.clear()  # no spare is warm any more
    w.catch_up()
    w.pass_()
    spare_ip = w.api.get("pods", NS, "rdzv-spare-0")["status"]["podIP"]
    # Then worker 1 fails: no warm spare, it is recreated under its own name.
    bad = w.api.get("pods", NS, "rdzv-worker-1")
    bad["status"]["phase"] = "Failed"
    bad["status"]["containerStatuses"] = [
        {"name": api.WORKER_CONTAINER, "state": {"terminated": {"exitCode": 1}}}
    ]
    w.catch_up()
    w.pass_()  # deletes it (the fake removes it at once)
    w.controller.observe_pod(w.key, "rdzv-worker-1", bad["metadata"]["uid"], True, gone=True)
    w.catch_up()
    w.pass_()  # creates the new worker 1
    new = w.api.get("pods", NS, "rdzv-worker-1")
    assert new["metadata"]["uid"] != bad["metadata"]["uid"]
    env = {e["name"]: e.get("value") for e in new["spec"]["containers"][0]["env"]}
    assert env["PET_RDZV_ENDPOINT"] == f"{spare_ip}:{api.RDZV_PORT}"
    w.forget()
