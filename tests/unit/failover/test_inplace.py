"""Restart in place (failurePolicy.restartInPlace): the operator's decision from the
launchers' statuses, inside the lifecycle pass. Pure: no server, no launcher."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gaudi_operator.api import Phase, to_rfc3339
from gaudi_operator.failover import inplace
from gaudi_operator.jobs import manifests
from gaudi_operator.jobs.observation import JobView, WorkerPod, observe
from gaudi_operator.jobs.plan import Plan, decide
from gaudi_train import control_protocol as protocol
from gaudi_train.control_protocol import Failure, LauncherStatus

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
KILLED = NOW - timedelta(seconds=1)


def job(
    policy: dict[str, Any] | None = None, status: dict[str, Any] | None = None, replicas: int = 2
) -> JobView:
    return JobView(
        name="j",
        namespace="ns",
        uid="u",
        generation=1,
        spec={
            "image": "img",
            "workers": {"replicas": replicas},
            "failurePolicy": {"restartInPlace": True, "backoffSeconds": 0, **(policy or {})},
        },
        status={"phase": "Running", **(status or {})},
    )


def worker(i: int, phase: str = "Running", **kw: Any) -> WorkerPod:
    return WorkerPod(
        name=f"j-worker-{i}",
        uid=f"u{i}",
        index=i,
        generation=0,
        owner_uid="u",
        phase=phase,
        ready=phase == "Running",
        node=f"n{i}",
        ip=f"127.0.9.{i + 1}",
        **kw,
    )


def exited(i: int, code: int = 137, gen: int = 0) -> Failure:
    return Failure(
        protocol.PROCESS_EXIT,
        gen,
        to_rfc3339(KILLED),
        pod=f"j-worker-{i}",
        node=f"n{i}",
        worker_index=i,
        rank=i,
        local_rank=0,
        exit_code=code,
        signal="SIGKILL" if code == 137 else None,
        step=41,
    )


def broken(i: int, gen: int = 0, kind: str = protocol.WORLD_BROKEN) -> Failure:
    return Failure(kind, gen, to_rfc3339(KILLED + timedelta(milliseconds=50)), pod=f"j-worker-{i}")


def launcher(
    i: int, state: str = protocol.RUNNING, gen: int = 0, *failures: Failure, world_pods: int = 2
) -> LauncherStatus:
    return LauncherStatus(
        version=3,
        state=state,
        in_place_generation=gen,
        pod=f"j-worker-{i}",
        worker_index=i,
        world_pods=world_pods,
        failures=failures,
    )


def run(
    j: JobView, launchers: dict[str, LauncherStatus], pods: list[WorkerPod] | None = None
) -> Plan:
    obs = observe(j, pods if pods is not None else [worker(0), worker(1)], NOW)
    return decide(replace(obs, launchers=launchers))


def cond(p: Plan, type_: str) -> Any:
    return next((c for c in p.status.conditions if c.type == type_), None)


def killed_world(gen: int = 0) -> dict[str, LauncherStatus]:
    """Worker 1's process was SIGKILLed; both launchers wait."""
    return {
        "j-worker-0": launcher(0, protocol.WAITING, gen, broken(0, gen)),
        "j-worker-1": launcher(1, protocol.WAITING, gen, exited(1, gen=gen)),
    }


def in_flight(gen: int = 1, since: datetime = NOW, restarts: int = 1) -> dict[str, Any]:
    return {
        "phase": "Restarting",
        "restarts": restarts,
        "inPlaceGeneration": gen,
        "conditions": [
            {
                "type": "Restarting",
                "status": "True",
                "reason": inplace.IN_PLACE,
                "message": "",
                "lastTransitionTime": to_rfc3339(since),
            }
        ],
    }


def test_a_killed_process_in_healthy_pods_restarts_the_world_in_place_and_is_recorded() -> None:
    p = run(job(), killed_world())
    assert p.delete == [] and p.create == []  # no pod deleted, none created
    assert p.status.restart_generation == 0
    assert p.status.in_place_generation == 1 and p.status.restarts == 1
    last = p.status.last_failure
    assert last is not None and (last.pod, last.node, last.exit_code) == ("j-worker-1", "n1", 137)
    assert last.reason == "Error" and "SIGKILL" in (last.message or "")
    assert p.status.phase == Phase.RESTARTING
    assert cond(p, "Restarting").reason == inplace.IN_PLACE
    assert [e.reason for e in p.events] == ["WorkerFailed", "RestartingInPlace"]
    fo = p.failover
    assert fo is not None and fo.deliver is not None
    assert (fo.deliver.action, fo.deliver.in_place_generation, fo.deliver.world_pods) == (
        protocol.RESTART,
        1,
        2,
    )
    assert fo.deliver_to == ["j-worker-0", "j-worker-1"]


def test_a_fail_rule_on_the_exit_code_fails_the_job_though_every_pod_is_healthy() -> None:
    p = run(job({"rules": [{"exitCodes": [137], "action": "Fail"}]}), killed_world())
    assert p.status.phase == Phase.FAILED
    assert cond(p, "Failed").reason == "FailurePolicyRule"
    assert p.status.restarts == 0 and p.status.last_failure.exit_code == 137
    fo = p.failover
    assert fo is not None and fo.deliver.action == protocol.FAIL
    assert fo.deliver_to == ["j-worker-0", "j-worker-1"]


def test_max_restarts_counts_in_place_restarts() -> None:
    p = run(job({"maxRestarts": 1}, {"restarts": 1}), killed_world())
    assert p.status.phase == Phase.FAILED
    assert cond(p, "Failed").reason == "RestartLimitExceeded"


def test_backoff_applies_and_nothing_is_told_meanwhile() -> None:
    p = run(job({"backoffSeconds": 10}), killed_world())
    assert p.status.in_place_generation == 0 and p.status.restarts == 0
    assert p.failover is not None and p.failover.deliver is None
    assert 8 < (p.requeue_after or 0) <= 10


def test_the_decision_waits_for_every_launcher_to_leave_the_world() -> None:
    launchers = {
        "j-worker-0": launcher(0, protocol.RUNNING, 0),  # still in a collective
        "j-worker-1": launcher(1, protocol.WAITING, 0, exited(1)),
    }
    p = run(job(), launchers)
    assert p.status.in_place_generation == 0 and p.status.restarts == 0
    assert p.failover is not None and p.failover.deliver is None
    assert 0 < (p.requeue_after or 0) <= inplace.SETTLE_SECONDS
    # Past the settle time, it decides with what it knows.
    later = replace(job(), status={"phase": "Running"})
    obs = observe(later, [worker(0), worker(1)], KILLED + timedelta(seconds=40))
    p = decide(replace(obs, launchers=launchers))
    assert p.status.in_place_generation == 1 and p.status.restarts == 1


def test_a_committed_decision_is_told_again_and_not_counted_twice() -> None:
    """The operator died after the status write: the launchers still wait at 0."""
    p = run(job(status=in_flight()), killed_world(0))
    assert p.status.restarts == 1 and p.status.in_place_generation == 1
    assert p.failover is not None and p.failover.deliver.in_place_generation == 1
    assert p.failover.deliver_to == ["j-worker-0", "j-worker-1"]
    assert [e.reason for e in p.events] == []
    assert p.status.phase == Phase.RESTARTING


def test_the_world_running_at_the_new_generation_ends_the_restart() -> None:
    running = {f"j-worker-{i}": launcher(i, protocol.RUNNING, 1) for i in (0, 1)}
    p = run(job(status=in_flight()), running)
    assert cond(p, "Restarting").status == "False"
    assert cond(p, "Restarting").reason == inplace.RECOVERED_IN_PLACE
    assert p.status.phase == Phase.RUNNING and p.failover.deliver_to == []


def test_pods_running_are_not_enough_while_the_launchers_re_form() -> None:
    half = {
        "j-worker-0": launcher(0, protocol.RUNNING, 1),
        "j-worker-1": launcher(1, protocol.RENDEZVOUS, 1),
    }
    p = run(job(status=in_flight()), half)
    assert cond(p, "Restarting").status == "True" and p.status.phase == Phase.RESTARTING


def test_a_world_that_does_not_re_form_in_time_is_recreated_without_counting_again() -> None:
    since = NOW - timedelta(seconds=inplace.DEADLINE_SECONDS + 1)
    stuck = {
        "j-worker-0": launcher(0, protocol.RUNNING, 1),
        "j-worker-1": launcher(1, protocol.RENDEZVOUS, 1),
    }
    p = run(job(status=in_flight(since=since)), stuck)
    assert p.status.restart_generation == 1 and p.status.restarts == 1
    assert sorted(w.name for w in p.delete) == ["j-worker-0", "j-worker-1"]
    assert cond(p, "Restarting").reason == inplace.IN_PLACE_FALLBACK
    assert [e.reason for e in p.events] == [inplace.IN_PLACE_FALLBACK]


def test_a_launcher_ahead_of_the_status_means_a_lost_write_and_recreates() -> None:
    ahead = {
        "j-worker-0": launcher(0, protocol.RUNNING, 2),
        "j-worker-1": launcher(1, protocol.RUNNING, 2),
    }
    p = run(job(status={"inPlaceGeneration": 1}), ahead)
    assert p.status.restart_generation == 1
    assert cond(p, "Restarting").reason == inplace.IN_PLACE_FALLBACK


def test_a_failed_pod_is_still_recreated() -> None:
    pods = [worker(0), worker(1, "Failed", exit_code=1, reason="Error", finished_at=NOW)]
    p = run(job(), {"j-worker-0": launcher(0, protocol.WAITING, 0, broken(0))}, pods)
    assert p.status.restart_generation == 1 and p.status.in_place_generation == 0
    assert p.failover is not None and p.failover.deliver is None


def test_without_restart_in_place_the_launchers_are_not_consulted() -> None:
    j = job()
    j = replace(j, spec={**j.spec, "failurePolicy": {"backoffSeconds": 0}})
    p = run(j, killed_world())
    assert p.status.in_place_generation == 0 and p.status.restarts == 0
    assert p.status.phase == Phase.RUNNING


def test_a_scale_down_re_forms_the_rest_in_place_without_counting() -> None:
    left = {"j-worker-0": launcher(0, protocol.WAITING, 0, broken(0, kind=protocol.PEER_STOPPED))}
    p = run(job(replicas=1), left, [worker(0)])
    assert p.status.in_place_generation == 1 and p.status.restarts == 0
    assert p.failover.deliver.world_pods == 1 and p.failover.deliver_to == ["j-worker-0"]


def test_a_scale_up_re_forms_the_world_with_the_new_pods() -> None:
    grown = {
        "j-worker-0": launcher(0, protocol.RUNNING, 0, world_pods=1),
        "j-worker-1": launcher(1, protocol.RENDEZVOUS, 0, world_pods=2),
    }
    p = run(job(), grown)
    assert p.status.in_place_generation == 1 and p.status.restarts == 0
    assert p.failover.deliver.world_pods == 2


def test_workers_get_the_control_endpoint_and_the_token_only_by_reference() -> None:
    obs = observe(job(status={"inPlaceGeneration": 3}), [], NOW)
    assert obs.spec is not None
    ref = manifests.JobRef("j", "ns", "u")
    pod = manifests.worker_pod_manifest(obs.spec, ref, 1, 0, in_place_generation=3)
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env["GAUDI3_CONTROL_PORT"]["value"] == "29401"
    assert env["GAUDI3_CONTROL_TOKEN"] == {
        "name": "GAUDI3_CONTROL_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "j-control", "key": "token"}},
    }
    assert env["GAUDI3_IN_PLACE_GENERATION"]["value"] == "3"
    assert env["GAUDI3_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    secret = manifests.control_secret_manifest(ref, "t0k3n")
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "u"
    plain = replace(job(), spec={**job().spec, "failurePolicy": {}})
    spec = observe(plain, [], NOW).spec
    assert spec is not None
    env = {
        e["name"]
        for e in manifests.worker_pod_manifest(spec, ref, 1, 0)["spec"]["containers"][0]["env"]
    }
    assert not {"GAUDI3_CONTROL_PORT", "GAUDI3_CONTROL_TOKEN"} & env


def test_a_launcher_that_stopped_answering_is_left_to_the_node_watch_until_the_deadline() -> None:
    """Its node died (the kubelet too, so the pod still shows Running): the survivor waits
    with a broken world, the dead launcher's last word was `running`. Not a process to
    restart in place: the node watch decides (NotReady past the grace); in place only if
    nothing did within the deadline."""
    world = {
        "j-worker-0": launcher(0, protocol.WAITING, 0, broken(0)),
        "j-worker-1": launcher(1, protocol.RUNNING, 0),
    }
    obs = observe(job(), [worker(0), worker(1)], NOW + timedelta(seconds=60))
    held = decide(replace(obs, launchers=world, unreachable=frozenset({"j-worker-1"})))
    assert held.status.in_place_generation == 0 and held.status.restarts == 0
    assert held.failover is not None and held.failover.deliver_to == []
    assert held.requeue_after is not None and 0 < held.requeue_after <= inplace.DEADLINE_SECONDS
    # Reachable but silent (a hung collective): decided after the settle time, as before.
    p = decide(replace(obs, launchers=world))
    assert p.status.in_place_generation == 1 and p.status.restarts == 1
    # Past the deadline nothing else decided: in place after all.
    late = observe(job(), [worker(0), worker(1)], NOW + timedelta(seconds=130))
    p = decide(replace(late, launchers=world, unreachable=frozenset({"j-worker-1"})))
    assert p.status.in_place_generation == 1
