"""failover.py: classification, rules, strategies, backoff, limits — no server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gaudi_operator.api import (
    LABEL_GENERATION,
    LABEL_JOB_NAME,
    LABEL_WORKER_INDEX,
    FailureAction,
    FailurePolicy,
    FailureReason,
    FailureRule,
    RestartStrategy,
    to_rfc3339,
)
from gaudi_operator.failover import policy as failover
from gaudi_operator.failover.policy import Failure, Signals, Verdict
from gaudi_operator.failover.progress import Progress
from gaudi_operator.jobs.observation import WorkerPod, observe_pod

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def pod(
    index: int = 0,
    phase: str = "Running",
    node: str = "n0",
    exit_code: int | None = None,
    reason: str = "Error",
    conditions: list[dict[str, Any]] | None = None,
    deleting: bool = False,
    status_reason: str | None = None,
    started: datetime | None = None,
) -> WorkerPod:
    body: dict[str, Any] = {
        "metadata": {
            "name": f"job-worker-{index}",
            "uid": f"uid-{index}",
            "labels": {
                LABEL_JOB_NAME: "job",
                LABEL_WORKER_INDEX: str(index),
                LABEL_GENERATION: "0",
            },
        },
        "spec": {"nodeName": node},
        "status": {"phase": phase, "conditions": conditions or []},
    }
    if exit_code is not None:
        body["status"]["containerStatuses"] = [
            {
                "name": "worker",
                "state": {
                    "terminated": {
                        "exitCode": exit_code,
                        "reason": reason,
                        "finishedAt": to_rfc3339(NOW - timedelta(seconds=5)),
                    }
                },
            }
        ]
    if deleting:
        body["metadata"]["deletionTimestamp"] = to_rfc3339(NOW)
    if status_reason:
        body["status"]["reason"] = status_reason
    if started is not None:
        body["status"]["startTime"] = to_rfc3339(started)
    return observe_pod(body)  # the same reduction the operator's pod index makes


def node(
    name: str = "n0", ready: bool = True, since: datetime = NOW, hpus: int = 8, allocatable: int = 8
) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {},
        "status": {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "reason": "KubeletReady" if ready else "KubeletDown",
                    "lastTransitionTime": to_rfc3339(since),
                }
            ],
            "capacity": {"habana.ai/gaudi": str(hpus)},
            "allocatable": {"habana.ai/gaudi": str(allocatable)},
        },
    }


# --- classification -----------------------------------------------------------------------


def test_running_pod_is_not_a_failure() -> None:
    assert failover.classify_pod(pod(), NOW) is None


def test_exit_code_is_classified_as_error_with_its_code() -> None:
    f = failover.classify_pod(pod(phase="Failed", exit_code=3), NOW)
    assert f is not None
    assert (f.reason, f.exit_code, f.worker_index, f.node) == (FailureReason.ERROR, 3, 0, "n0")
    assert f.time == NOW - timedelta(seconds=5)  # when it died, not when we looked


def test_oomkilled_is_its_own_reason() -> None:
    f = failover.classify_pod(pod(phase="Failed", exit_code=137, reason="OOMKilled"), NOW)
    assert f is not None and f.reason == FailureReason.OOM_KILLED


def test_signal_exit_names_the_signal() -> None:
    f = failover.classify_pod(pod(phase="Failed", exit_code=137), NOW)
    assert f is not None and f.reason == FailureReason.ERROR and "SIGKILL" in f.message


@pytest.mark.parametrize(
    ("disruption", "expected"),
    [
        ("EvictionByEvictionAPI", FailureReason.EVICTED),
        ("PreemptionByScheduler", FailureReason.PREEMPTED),
        ("DeletionByTaintManager", FailureReason.NODE_LOST),
        ("TerminationByKubelet", FailureReason.EVICTED),
    ],
)
def test_disruption_target_condition_names_the_reason(
    disruption: str, expected: FailureReason
) -> None:
    cond = {"type": "DisruptionTarget", "status": "True", "reason": disruption}
    # A preempted pod dies of SIGTERM (143): the condition, not the code, is the reason.
    f = failover.classify_pod(pod(phase="Failed", exit_code=143, conditions=[cond]), NOW)
    assert f is not None and f.reason == expected


def test_kubelet_eviction_without_condition_is_evicted() -> None:
    f = failover.classify_pod(pod(phase="Failed", status_reason="Evicted"), NOW)
    assert f is not None and f.reason == FailureReason.EVICTED


def test_pod_deleted_by_someone_else_counts_as_evicted() -> None:
    f = failover.classify_pod(pod(deleting=True), NOW)
    assert f is not None and f.reason == FailureReason.EVICTED and "another client" in f.message


# --- nodes --------------------------------------------------------------------------------

POLICY = FailurePolicy(node_failure_grace_seconds=30)


def healths(nodes: dict[str, dict[str, Any]]) -> dict[str, failover.NodeHealth]:
    """Node objects as the node cache hands them to a pass: parsed."""
    return {name: failover.node_health(body, name) for name, body in nodes.items()}


def test_notready_node_waits_for_the_grace_then_is_lost() -> None:
    nodes = {"n0": node(ready=False, since=NOW - timedelta(seconds=10))}
    d = failover.detect_failures([pod()], POLICY, NOW, Signals(nodes=healths(nodes)))
    assert d.failures == [] and d.recheck_after == pytest.approx(20)
    d = failover.detect_failures(
        [pod()], POLICY, NOW + timedelta(seconds=21), Signals(nodes=healths(nodes))
    )
    assert [f.reason for f in d.failures] == [FailureReason.NODE_LOST]
    # The failure dates from when the grace ran out, for the latency figures.
    assert d.failures[0].time == NOW + timedelta(seconds=20)


def test_deleted_node_is_lost_at_once() -> None:
    d = failover.detect_failures(
        [pod()], POLICY, NOW, Signals(nodes={"n0": failover.node_health(None, "n0")})
    )
    assert [f.reason for f in d.failures] == [FailureReason.NODE_LOST]


def test_unknown_node_is_not_a_failure() -> None:
    assert failover.detect_failures([pod()], POLICY, NOW, Signals()).failures == []


def test_allocatable_hpu_drop_is_hpu_unhealthy() -> None:
    d = failover.detect_failures(
        [pod()], POLICY, NOW, Signals(nodes=healths({"n0": node(allocatable=6)}))
    )
    assert [f.reason for f in d.failures] == [FailureReason.HPU_UNHEALTHY]
    assert "6 of 8" in d.failures[0].message


# --- the Gaudi exporter's faults (HPU health query) ---------------------------------------

HpuFault, Kind = failover.HpuFault, failover.HpuFaultKind
STARTED = NOW - timedelta(minutes=5)
ECC = HpuFault(Kind.ECC, "HPU 3: 2 rows with double-bit ECC errors pending replacement")
HOT = HpuFault(Kind.TEMPERATURE, "HPU 1: on-chip temperature 126 C reached its shutdown threshold")
LINK = HpuFault(Kind.LINK_DOWN, "HPU 5: 1 scale-out port(s) down")


def hpu(
    faults: dict[str, list[failover.HpuFault]], at: datetime = NOW, grace: float = 40
) -> Signals:
    return Signals(hpu=failover.HpuReading(faults, at, grace))


def detect_hpu(signals: Signals, replicas: int = 2, started: datetime = STARTED) -> list[Failure]:
    pods = [pod(0, node="n0", started=started), pod(1, node="n1", started=started)]
    return failover.detect_failures(pods, POLICY, NOW, signals, replicas=replicas).failures


def test_ecc_fault_of_a_workers_card_is_hpu_unhealthy_on_its_node() -> None:
    [f] = detect_hpu(hpu({"job-worker-1": [ECC]}))
    assert (f.reason, f.pod, f.node, f.worker_index) == (
        FailureReason.HPU_UNHEALTHY,
        "job-worker-1",
        "n1",
        1,
    )
    assert f.message == ECC.message and f.node_at_fault


def test_over_temperature_is_hpu_unhealthy() -> None:
    [f] = detect_hpu(hpu({"job-worker-0": [HOT]}))
    assert f.reason == FailureReason.HPU_UNHEALTHY and "shutdown threshold" in f.message


def test_scale_out_link_down_is_its_own_reason_for_a_multi_worker_job() -> None:
    [f] = detect_hpu(hpu({"job-worker-1": [LINK]}), replicas=2)
    assert f.reason == FailureReason.SCALE_OUT_LINK_DOWN and f.node == "n1" and f.node_at_fault
    d = decide(FailurePolicy(), [f])
    assert d.newly_excluded == ["n1"]


def test_scale_out_link_down_does_not_matter_to_a_single_worker() -> None:
    assert detect_hpu(hpu({"job-worker-0": [LINK]}), replicas=1) == []


def test_a_bad_card_wins_over_a_down_link_of_the_same_worker() -> None:
    [f] = detect_hpu(hpu({"job-worker-1": [LINK, ECC]}))
    assert f.reason == FailureReason.HPU_UNHEALTHY and f.message == ECC.message


def test_a_reading_about_a_pod_of_another_name_is_nobodys_failure() -> None:
    assert detect_hpu(hpu({"other-worker-0": [ECC]})) == []


def test_a_reading_speaks_for_a_worker_only_once_it_is_older_than_the_grace() -> None:
    # A new worker of the same name as the faulty one it replaced: the exporter's last
    # scrape may still name the old one.
    young = NOW - timedelta(seconds=10)
    assert detect_hpu(hpu({"job-worker-1": [ECC]}, grace=40), started=young) == []
    assert len(detect_hpu(hpu({"job-worker-1": [ECC]}, grace=5), started=young)) == 1
    # A reading taken before the worker started says nothing about it either.
    old_reading = hpu({"job-worker-1": [ECC]}, at=young - timedelta(seconds=1), grace=0)
    assert detect_hpu(old_reading, started=young) == []


def test_a_worker_not_started_yet_has_no_hpu_failure() -> None:
    pods = [pod(1, node="n1")]  # no startTime
    assert failover.detect_failures(pods, POLICY, NOW, hpu({"job-worker-1": [ECC]})).failures == []


def test_no_reading_no_hpu_failure() -> None:
    assert detect_hpu(Signals()) == []


def test_pod_failure_wins_over_its_node_state() -> None:
    d = failover.detect_failures(
        [pod(phase="Failed", exit_code=1)],
        POLICY,
        NOW,
        Signals(nodes={"n0": failover.node_health(None, "n0")}),
    )
    assert [f.reason for f in d.failures] == [FailureReason.ERROR]


# --- stall --------------------------------------------------------------------------------


def read(step: float, advanced_ago: float, seen_ago: float = 0) -> Progress:
    return Progress(step, NOW - timedelta(seconds=advanced_ago), NOW - timedelta(seconds=seen_ago))


def test_stall_needs_a_step_and_the_timeout() -> None:
    assert failover.stall_failure(None, None, 60) is None
    assert failover.stall_failure(read(5, 59), None, 60) is None
    assert failover.stall_failure(read(5, 600), None, 0) is None
    f = failover.stall_failure(read(5, 61), None, 60)
    assert f is not None and f.reason == FailureReason.STALLED and f.pod is None
    assert f.time == NOW - timedelta(seconds=1)  # when the timeout ran out


def test_stall_is_seen_in_reads_not_assumed_while_prometheus_is_away() -> None:
    # Last read 50 s ago, 20 s after the last advance: nothing shows 60 s without progress.
    assert failover.stall_failure(read(5, 70, seen_ago=50), None, 60) is None
    assert failover.stall_failure(read(5, 70, seen_ago=5), None, 60) is not None


def test_stall_counts_from_the_world_becoming_ready() -> None:
    since = NOW - timedelta(seconds=30)
    assert failover.stall_failure(read(5, 600), since, 60) is None
    assert failover.stall_failure(read(5, 600), NOW - timedelta(seconds=60), 60) is not None


def test_stall_is_not_counted_twice_with_a_worker_failure() -> None:
    stall = failover.stall_failure(read(5, 61), None, 60)
    d = failover.detect_failures([pod(phase="Failed", exit_code=1)], POLICY, NOW, stall=stall)
    assert [f.reason for f in d.failures] == [FailureReason.ERROR]


# --- rules --------------------------------------------------------------------------------


def fail(
    reason: FailureReason = FailureReason.ERROR,
    exit_code: int | None = 1,
    index: int | None = 0,
    node: str | None = "n0",
    at: datetime = NOW,
) -> Failure:
    return Failure(
        reason, at, f"job-worker-{index}" if index is not None else None, node, index, exit_code
    )


def test_first_matching_rule_wins() -> None:
    policy = FailurePolicy(
        rules=[
            FailureRule(exit_codes=[2], action=FailureAction.FAIL),
            FailureRule(exit_codes=[2, 3], action=FailureAction.RESTART),
        ]
    )
    assert failover.action_for(policy, fail(exit_code=2)) == FailureAction.FAIL
    assert failover.action_for(policy, fail(exit_code=3)) == FailureAction.RESTART
    assert failover.action_for(policy, fail(exit_code=4)) == FailureAction.RESTART  # no match


def test_exit_code_rule_ignores_a_disruptions_sigterm_code() -> None:
    policy = FailurePolicy(rules=[FailureRule(exit_codes=[143], action=FailureAction.FAIL)])
    evicted = fail(FailureReason.EVICTED, exit_code=143)
    assert failover.action_for(policy, evicted) == FailureAction.RESTART


def test_reason_rule_matches() -> None:
    policy = FailurePolicy(
        rules=[
            FailureRule(
                reasons=[FailureReason.NODE_LOST], action=FailureAction.RESTART_IGNORE_LIMIT
            )
        ]
    )
    lost = fail(FailureReason.NODE_LOST, exit_code=None)
    assert failover.action_for(policy, lost) == FailureAction.RESTART_IGNORE_LIMIT


# --- decisions ----------------------------------------------------------------------------


def decide(
    policy: FailurePolicy,
    failures: list[Failure],
    restarts: int = 0,
    excluded: list[str] | None = None,
    now: datetime = NOW,
) -> failover.FailoverDecision:
    return failover.decide(
        policy, failures, restarts=restarts, excluded_nodes=excluded or [], replicas=4, now=now
    )


def test_no_failure_no_action() -> None:
    assert decide(FailurePolicy(), []).verdict == Verdict.NONE


def test_fail_rule_fails_the_job_at_once() -> None:
    policy = FailurePolicy(
        backoff_seconds=10, rules=[FailureRule(exit_codes=[2], action=FailureAction.FAIL)]
    )
    d = decide(policy, [fail(exit_code=2)])
    assert d.verdict == Verdict.FAIL and "rule says Fail" in d.message


def test_recreate_all_replaces_every_worker_in_a_new_generation() -> None:
    d = decide(FailurePolicy(backoff_seconds=0), [fail(index=2)])
    assert d.verdict == Verdict.RESTART and d.new_generation
    assert d.replace_indices == [0, 1, 2, 3] and d.restarts == 1 and d.counted


def test_recreate_failed_replaces_only_the_failed_worker() -> None:
    policy = FailurePolicy(backoff_seconds=0, restart_strategy=RestartStrategy.RECREATE_FAILED)
    d = decide(policy, [fail(index=2)])
    assert d.verdict == Verdict.RESTART and not d.new_generation
    assert d.replace_indices == [2] and d.pods_to_delete == ["job-worker-2"]


def test_a_stall_recreates_the_whole_world_even_with_recreate_failed() -> None:
    policy = FailurePolicy(backoff_seconds=0, restart_strategy=RestartStrategy.RECREATE_FAILED)
    d = decide(policy, [fail(FailureReason.STALLED, None, index=None, node=None)])
    assert d.new_generation and d.replace_indices == [0, 1, 2, 3]


def test_restart_ignore_limit_is_not_counted() -> None:
    policy = FailurePolicy(
        backoff_seconds=0,
        max_restarts=1,
        rules=[
            FailureRule(
                reasons=[FailureReason.NODE_LOST], action=FailureAction.RESTART_IGNORE_LIMIT
            )
        ],
    )
    d = decide(policy, [fail(FailureReason.NODE_LOST, None)], restarts=1)
    assert d.verdict == Verdict.RESTART and not d.counted and d.restarts == 1


def test_spent_limit_fails_the_job_with_the_last_reason() -> None:
    d = decide(FailurePolicy(backoff_seconds=0, max_restarts=2), [fail(exit_code=7)], restarts=2)
    assert d.verdict == Verdict.FAIL and d.primary is not None
    assert d.primary.exit_code == 7 and "maxRestarts (2)" in d.message


def test_backoff_waits_then_restarts() -> None:
    policy = FailurePolicy(backoff_seconds=10)
    d = decide(policy, [fail(at=NOW)], restarts=2, now=NOW + timedelta(seconds=5))
    assert d.verdict == Verdict.WAIT and d.requeue_after == pytest.approx(35)
    d = decide(policy, [fail(at=NOW)], restarts=2, now=NOW + timedelta(seconds=41))
    assert d.verdict == Verdict.RESTART and d.restarts == 3


def test_uncounted_infrastructure_failure_is_replaced_without_backoff() -> None:
    # A lost node is not the program's fault and its replacement avoids the node:
    # waiting would only add downtime.
    policy = FailurePolicy(
        backoff_seconds=10,
        rules=[
            FailureRule(
                reasons=[FailureReason.NODE_LOST], action=FailureAction.RESTART_IGNORE_LIMIT
            )
        ],
    )
    d = decide(policy, [fail(FailureReason.NODE_LOST, None, at=NOW)], restarts=2, now=NOW)
    assert d.verdict == Verdict.RESTART and not d.counted
    # The same policy still backs off a counted program failure.
    d = decide(policy, [fail(at=NOW)], restarts=2, now=NOW)
    assert d.verdict == Verdict.WAIT


def test_backoff_doubles_and_is_capped() -> None:
    assert [failover.backoff_seconds(10, n) for n in range(4)] == [10, 20, 40, 80]
    assert failover.backoff_seconds(10, 20) == failover.MAX_BACKOFF_SECONDS
    assert failover.backoff_seconds(0, 5) == 0
    assert failover.backoff_seconds(600, 3) == 600  # a large base is its own cap


def test_failed_node_is_excluded_once() -> None:
    d = decide(
        FailurePolicy(backoff_seconds=0),
        [fail(FailureReason.NODE_LOST, None, node="n1")],
        excluded=["n1"],
    )
    assert d.excluded_nodes == ["n1"] and d.newly_excluded == []
    d = decide(
        FailurePolicy(backoff_seconds=0),
        [fail(FailureReason.HPU_UNHEALTHY, None, node="n2")],
        excluded=["n1"],
    )
    assert d.excluded_nodes == ["n1", "n2"] and d.newly_excluded == ["n2"]


def test_program_errors_do_not_exclude_the_node() -> None:
    d = decide(FailurePolicy(backoff_seconds=0), [fail(exit_code=1, node="n1")])
    assert d.excluded_nodes == []


def test_exclusion_can_be_turned_off() -> None:
    d = decide(
        FailurePolicy(backoff_seconds=0, exclude_failed_nodes=False),
        [fail(FailureReason.NODE_LOST, None, node="n1")],
    )
    assert d.excluded_nodes == []


# --- placement ----------------------------------------------------------------------------


def test_unschedulable_pending_worker_gives_the_schedulers_message() -> None:
    stuck = WorkerPod(
        name="job-worker-1",
        index=1,
        phase="Pending",
        unschedulable="0/4 nodes are available: 4 Insufficient habana.ai/gaudi.",
    )
    msg = failover.unschedulable_message([pod(), stuck])
    assert msg is not None and "Insufficient habana.ai/gaudi" in msg
    assert failover.unschedulable_message([pod()]) is None


def test_operators_own_deletions_are_not_failures() -> None:
    gone = pod(deleting=True)
    assert failover.detect_failures([gone], POLICY, NOW).failures != []
    own = Signals(own_deletions=frozenset({"uid-0"}))
    assert failover.detect_failures([gone], POLICY, NOW, own).failures == []


def test_vanished_worker_is_a_failure_until_it_is_back() -> None:
    lost = Failure(FailureReason.PREEMPTED, NOW, "job-worker-1", "n0", 1)
    d = failover.detect_failures([pod()], POLICY, NOW, Signals(gone=[lost]))
    assert [f.reason for f in d.failures] == [FailureReason.PREEMPTED]
    d = failover.detect_failures([pod(), pod(index=1)], POLICY, NOW, Signals(gone=[lost]))
    assert d.failures == []


def test_hpu_drop_spares_workers_placed_after_it() -> None:
    seen = failover.node_health(node(allocatable=6), "n0", NOW - timedelta(minutes=5))
    old, new = pod(), pod(index=1)
    old = WorkerPod(**{**old.__dict__, "started_at": NOW - timedelta(minutes=10)})
    new = WorkerPod(**{**new.__dict__, "started_at": NOW - timedelta(minutes=1)})
    d = failover.detect_failures([old, new], POLICY, NOW, Signals(nodes={"n0": seen}))
    assert [f.pod for f in d.failures] == ["job-worker-0"]


def test_a_half_placed_world_is_released_after_the_placement_timeout() -> None:
    placed = pod(index=0)
    waiting = WorkerPod(
        **{
            **pod(index=1, phase="Pending", node="").__dict__,
            "node": None,
            "unschedulable": "0/4 nodes are available: 4 Insufficient habana.ai/gaudi.",
            "unschedulable_since": NOW - timedelta(seconds=100),
        }
    )
    early = failover.detect_failures([placed, waiting], POLICY, NOW, placement_timeout=300)
    assert early.failures == [] and early.recheck_after == pytest.approx(200)
    late = failover.detect_failures(
        [placed, waiting], POLICY, NOW + timedelta(seconds=201), placement_timeout=300
    )
    (f,) = late.failures
    assert f.reason == FailureReason.PLACEMENT_TIMEOUT and "1 of 2 workers" in f.message
    # Nobody's fault: restarted without counting, unless a rule says otherwise.
    assert failover.action_for(POLICY, f) == FailureAction.RESTART_IGNORE_LIMIT
    # Nothing held (no worker placed), or gang scheduling (timeout 0): nothing to release.
    assert (
        failover.detect_failures(
            [waiting], POLICY, NOW + timedelta(hours=1), placement_timeout=300
        ).failures
        == []
    )
    assert (
        failover.detect_failures([placed, waiting], POLICY, NOW + timedelta(hours=1)).failures == []
    )
