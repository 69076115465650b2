"""Warm spares (spec.workers.spares) in the lifecycle pass: which spare takes a lost
worker's index, the world re-formed with it, the pool refilled. Pure: no server."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from gaudi_operator import api
from gaudi_operator.api import GaudiTrainingJobSpec, Phase, RestartStrategy
from gaudi_operator.failover import inplace
from gaudi_operator.jobs import manifests, spares
from gaudi_operator.jobs.observation import JobView, WorkerPod, observe, observe_pod
from gaudi_operator.jobs.plan import Plan, decide
from gaudi_operator.runtime.expectations import Expectations
from gaudi_train import control_protocol as protocol
from gaudi_train.control_protocol import Failure, LauncherStatus

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def job(
    spares_: int = 1,
    status: dict[str, Any] | None = None,
    replicas: int = 2,
    policy: dict[str, Any] | None = None,
) -> JobView:
    return JobView(
        name="j",
        namespace="ns",
        uid="u",
        generation=1,
        spec={
            "image": "img",
            "workers": {"replicas": replicas, "spares": spares_},
            "failurePolicy": {"restartInPlace": True, "backoffSeconds": 0, **(policy or {})},
        },
        status={"phase": "Running", **(status or {})},
    )


def worker(i: int, phase: str = "Running", name: str | None = None, **kw: Any) -> WorkerPod:
    return WorkerPod(
        name=name or f"j-worker-{i}",
        uid=f"u{i}" if name is None else f"u-{name}",
        index=i,
        generation=kw.pop("generation", 0),
        owner_uid="u",
        phase=phase,
        ready=phase == "Running",
        node=kw.pop("node", f"n{i}"),
        ip=kw.pop("ip", f"127.0.9.{i + 1}"),
        **kw,
    )


def spare(n: int, phase: str = "Running", **kw: Any) -> WorkerPod:
    return WorkerPod(
        name=f"j-spare-{n}",
        uid=f"s{n}",
        generation=0,
        owner_uid="u",
        phase=phase,
        ready=phase == "Running",
        node=kw.pop("node", f"spare-node-{n}"),
        ip=kw.pop("ip", f"127.0.8.{n + 1}"),
        spare=True,
        **kw,
    )


def status_of(
    name: str, state: str = protocol.RUNNING, gen: int = 0, *failures: Failure, **kw: Any
) -> LauncherStatus:
    return LauncherStatus(
        version=3, state=state, in_place_generation=gen, pod=name, failures=failures, **kw
    )


def warm(n: int) -> LauncherStatus:
    return status_of(f"j-spare-{n}", protocol.SPARE, spare=True)


def run(j: JobView, pods: list[WorkerPod], launchers: dict[str, LauncherStatus]) -> Plan:
    return decide(replace(observe(j, pods, NOW), launchers=launchers))


def running(*names: str, gen: int = 0) -> dict[str, LauncherStatus]:
    return {n: status_of(n, protocol.RUNNING, gen, world_pods=2) for n in names}


def cond(p: Plan, type_: str) -> Any:
    return next((c for c in p.status.conditions if c.type == type_), None)


DELETED = {"deleting": True}


# --- the API --------------------------------------------------------------------------------


def test_spares_need_restart_in_place_and_the_message_names_the_field() -> None:
    with pytest.raises(ValidationError, match=r"spec\.workers\.spares needs"):
        GaudiTrainingJobSpec.model_validate({"image": "i", "workers": {"spares": 1}})
    spec = GaudiTrainingJobSpec.model_validate(
        {"image": "i", "workers": {"spares": 2}, "failurePolicy": {"restartInPlace": True}}
    )
    assert spec.workers.spares == 2


def test_a_spare_pod_is_a_worker_pod_without_an_index_and_marked_spare() -> None:
    spec = GaudiTrainingJobSpec.model_validate(
        {
            "image": "i",
            "workers": {"replicas": 2, "spares": 1},
            "hpusPerWorker": 1,
            "failurePolicy": {"restartInPlace": True},
        }
    )
    ref = manifests.JobRef("j", "ns", "u")
    pod = manifests.spare_pod_manifest(spec, ref, 3, 1, ["bad"], in_place_generation=4)
    worker = manifests.worker_pod_manifest(spec, ref, 0, 1, ["bad"], in_place_generation=4)
    assert pod["metadata"]["name"] == pod["spec"]["hostname"] == "j-spare-3"
    labels = pod["metadata"]["labels"]
    assert labels[api.LABEL_SPARE] == "true" and api.LABEL_WORKER_INDEX not in labels
    assert labels[api.LABEL_GENERATION] == "1"
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["GAUDI3_SPARE"] == "1" and "GAUDI3_WORKER_INDEX" not in env
    assert env["GAUDI3_IN_PLACE_GENERATION"] == "4"
    # Not a scrape target while it has no ranks; the promotion makes it one.
    assert api.ANNOTATION_PROMETHEUS_SCRAPE not in pod["metadata"]["annotations"]
    assert worker["metadata"]["annotations"][api.ANNOTATION_PROMETHEUS_SCRAPE] == "true"
    promoted = manifests.promotion_patch(1, 1)["metadata"]["annotations"]
    assert promoted == {k: v for k, v in worker["metadata"]["annotations"].items() if k in promoted}
    assert promoted[api.ANNOTATION_PROMETHEUS_SCRAPE] == "true"
    # What it holds and where it may run are a worker's.
    c, w = pod["spec"]["containers"][0], worker["spec"]["containers"][0]
    assert c["resources"] == w["resources"]
    assert pod["spec"]["affinity"] == worker["spec"]["affinity"]
    seen = observe_pod(pod)
    assert seen.spare and seen.index is None
    # Promoted: the patch turns it into worker 1 of generation 1 in one write.
    patch = manifests.promotion_patch(1, 1)
    labels = {**labels, **patch["metadata"]["labels"]}
    labels = {k: v for k, v in labels.items() if v is not None}
    seen = observe_pod({**pod, "metadata": {**pod["metadata"], "labels": labels}})
    assert not seen.spare and seen.index == 1 and seen.generation == 1


# --- the pool ---------------------------------------------------------------------------------


def test_spares_start_once_every_worker_has_a_node_and_are_no_surplus() -> None:
    placed = [worker(0), worker(1)]
    p = run(job(2), placed, running("j-worker-0", "j-worker-1"))
    assert p.create == [] and p.create_spares == [0, 1] and p.delete == []
    assert p.status.phase == Phase.RUNNING
    # A worker still waits for a node: no spare may take its place in the queue.
    waiting = [worker(0), worker(1, phase="Pending", node=None)]
    assert run(job(2), waiting, {}).create_spares == []
    # Spares that run are kept; their HPUs count as the job's.
    p = run(job(2), [*placed, spare(0), spare(1)], running("j-worker-0", "j-worker-1"))
    assert p.create_spares == [] and p.delete == [] and p.promote == []
    assert p.status.phase == Phase.RUNNING and p.status.workers == "2/2"
    assert p.status.hpus == 4 * 8


def test_a_failed_excess_or_excluded_spare_goes_and_the_next_free_number_is_used() -> None:
    pods = [worker(0), worker(1), spare(0, phase="Failed"), spare(1), spare(2), spare(3)]
    p = run(job(2), pods, running("j-worker-0", "j-worker-1"))
    assert sorted(d.name for d in p.delete) == ["j-spare-0", "j-spare-3"]
    assert p.create_spares == []
    # A spare on a node this job excluded is replaced by one elsewhere.
    bad = spare(1, node="bad")
    p = run(job(1, {"excludedNodes": ["bad"]}), [worker(0), worker(1), bad], {})
    assert [d.name for d in p.delete] == ["j-spare-1"] and p.create_spares == [0]


def test_spares_go_with_a_finished_job_whatever_clean_pod_policy_keeps() -> None:
    done = job(1, {"phase": "Succeeded"})
    spec = {**done.spec, "runPolicy": {"cleanPodPolicy": "None"}}
    p = run(replace(done, spec=spec), [worker(0, "Succeeded"), spare(0)], {})
    assert [d.name for d in p.delete] == ["j-spare-0"] and p.create_spares == []


# --- a lost worker ------------------------------------------------------------------------------


def test_a_deleted_worker_s_index_goes_to_a_warm_spare_not_a_new_pod_even_with_recreate_all() -> (
    None
):
    pods = [worker(0), worker(1, **DELETED), spare(0), spare(1)]
    launchers = {**running("j-worker-0", "j-worker-1"), "j-spare-0": warm(0)}
    p = run(job(2), pods, launchers)  # restartStrategy: RecreateAll (the default)
    assert p.status.restart_generation == 0  # no new world of pods
    assert [(s.name, i) for s, i in p.promote] == [("j-spare-0", 1)]
    assert p.create == []  # j-worker-1's name is still taken; the spare does not need it
    assert p.create_spares == []  # refilled once the world has its nodes again
    restarting = cond(p, "Restarting")
    assert restarting.status == "True" and restarting.reason == "Evicted"
    assert "warm spare j-spare-0 takes worker 1, no new pod" in restarting.message
    assert [e.reason for e in p.events] == ["WorkerFailed", "RestartingWorkers"]
    assert "warm spare" in p.events[1].message


def test_a_cold_spare_is_not_used_and_recreate_all_stays() -> None:
    pods = [worker(0), worker(1, **DELETED), spare(0)]
    cold = status_of("j-spare-0", protocol.STARTING, spare=True)
    p = run(job(1), pods, {**running("j-worker-0"), "j-spare-0": cold})
    assert p.promote == [] and p.status.restart_generation == 1


def test_a_failed_pod_in_backoff_keeps_its_index_from_the_spare() -> None:
    pods = [worker(0), worker(1, "Failed", exit_code=1), spare(0)]
    p = run(job(1, policy={"backoffSeconds": 30}), pods, {"j-spare-0": warm(0)})
    assert p.promote == [] and p.create == []
    assert p.failover is not None and p.failover.hold_create


def test_a_failed_pod_is_replaced_by_the_spare_and_deleted() -> None:
    pods = [worker(0), worker(1, "Failed", exit_code=1), spare(0)]
    p = run(job(1, policy={"restartStrategy": "RecreateFailed"}), pods, {"j-spare-0": warm(0)})
    assert [(s.name, i) for s, i in p.promote] == [("j-spare-0", 1)]
    assert [d.name for d in p.delete] == ["j-worker-1"] and p.status.restarts == 1


def test_the_world_re_forms_with_the_promoted_spare_counting_nothing_again() -> None:
    """The pass after the promotion: the spare holds index 1, the lost pod still goes."""
    promoted = worker(1, name="j-spare-0", node="spare-node-0", ip="127.0.8.1")
    pods = [worker(0), worker(1, **DELETED), promoted]
    before = {"restarts": 0, "replacedPods": ["u1"], "inPlaceGeneration": 2}
    launchers = {
        "j-worker-0": status_of(
            "j-worker-0", protocol.WAITING, 2, Failure(protocol.PEER_STOPPED, 2, "t")
        ),
        "j-worker-1": status_of("j-worker-1", protocol.STOPPING, 2),
        "j-spare-0": warm(0),
    }
    p = run(job(1, before), pods, launchers)
    assert p.promote == [] and p.create == [] and p.delete == []
    assert p.status.in_place_generation == 3 and p.status.restarts == 0
    assert cond(p, "Restarting").reason == inplace.IN_PLACE
    assert "warm spare j-spare-0 took the place of worker 1" in cond(p, "Restarting").message
    fo = p.failover
    assert fo is not None and fo.deliver.world_pods == 2 and fo.deliver.in_place_generation == 3
    assert fo.deliver_to == ["j-spare-0", "j-worker-0"]
    # The next pass, before the spare took it: told again, not decided again.
    again = run(job(1, p.status.to_dict()), pods, launchers)
    assert again.status.in_place_generation == 3 and again.failover.deliver_to == [
        "j-spare-0",
        "j-worker-0",
    ]
    # And it is done when the world runs at generation 3 with the spare.
    done = {
        "j-worker-0": status_of("j-worker-0", protocol.RUNNING, 3, world_pods=2),
        "j-spare-0": status_of("j-spare-0", protocol.RUNNING, 3, world_pods=2),
    }
    p = run(job(1, p.status.to_dict()), [worker(0), promoted], done)
    assert cond(p, "Restarting").reason == inplace.RECOVERED_IN_PLACE
    assert p.status.phase == Phase.RUNNING and p.create_spares == [1]


def test_the_lost_pod_of_an_index_a_spare_holds_is_surplus_if_nobody_deleted_it() -> None:
    """The operator died after the promotion, before deleting the failed pod."""
    promoted = worker(1, name="j-spare-0", node="spare-node-0")
    pods = [worker(0), worker(1, "Failed", exit_code=1), promoted]
    p = run(job(1, {"replacedPods": ["u1"]}), pods, running("j-worker-0", "j-spare-0"))
    assert [d.name for d in p.delete] == ["j-worker-1"] and p.create == []
    held = spares.holders("j", [w for w in pods if not w.spare], 0)
    assert held[1].name == "j-spare-0"


def test_a_spare_at_index_0_hosts_the_store_at_its_own_address() -> None:
    first = worker(0, name="j-spare-2", ip="127.0.8.3")
    assert spares.rendezvous("j", [first, worker(1)]) == f"127.0.8.3:{api.RDZV_PORT}"
    assert spares.rendezvous("j", [worker(0), worker(1)]) is None


def test_expectations_wait_for_the_relabelled_spare() -> None:
    e = Expectations()
    key = ("ns", "j")
    e.expect(key, relabels={"j-spare-0": 1})
    e.observe(key, "j-spare-0", "s0", False, None)  # an older event: still a spare
    assert not e.satisfied(key)
    e.observe(key, "j-spare-0", "s0", False, 1)
    assert e.satisfied(key)
    e.expect(key, relabels={"j-spare-1": 0})
    e.relabeled(key, "j-spare-1")  # the patch failed
    assert e.satisfied(key)


def test_failover_keeps_recreate_all_when_spares_cannot_cover_the_lost_indices() -> None:
    from gaudi_operator.api import FailurePolicy, FailureReason
    from gaudi_operator.failover.policy import Failure as PodFailure
    from gaudi_operator.failover.policy import decide as decide_failover

    lost = [
        PodFailure(FailureReason.EVICTED, NOW - timedelta(seconds=1), f"p{i}", None, i)
        for i in (0, 1)
    ]
    kw: dict[str, Any] = {"restarts": 0, "excluded_nodes": [], "replicas": 4, "now": NOW}
    policy = FailurePolicy(backoff_seconds=0)
    one = decide_failover(policy, lost, warm_spares=1, **kw)
    two = decide_failover(policy, lost, warm_spares=2, **kw)
    assert one.strategy == RestartStrategy.RECREATE_ALL and one.new_generation
    assert two.strategy == RestartStrategy.RECREATE_FAILED and not two.new_generation


def test_a_pod_stuck_going_on_a_dead_node_is_deleted_again_without_grace() -> None:
    """A RecreateAll deleted the old world with grace; one of its pods sat on a node that
    then died: its kubelet never confirms, and its name is the new world's worker 0."""
    from gaudi_operator.failover.policy import NodeHealth, Signals

    old = replace(worker(0, generation=0, node="dead"), deleting=True)
    new = worker(1, generation=1, node="n1")
    lost = NodeHealth("dead", ready=False, not_ready_since=NOW - timedelta(seconds=60))
    j = job(0, {"restartGeneration": 1}, policy={"nodeFailureGraceSeconds": 30})
    obs = replace(observe(j, [old, new], NOW), signals=Signals(nodes={"dead": lost}))
    p = decide(obs)
    assert [d.name for d in p.delete] == ["j-worker-0"] and p.force_delete == ["j-worker-0"]
    assert p.create == []  # its name is free only once it is gone
    # Within the grace, the kubelet may still confirm: nothing more.
    early = NodeHealth("dead", ready=False, not_ready_since=NOW - timedelta(seconds=10))
    p = decide(replace(obs, signals=Signals(nodes={"dead": early})))
    assert p.delete == [] and p.force_delete == []
