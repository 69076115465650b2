"""Restart in place (failurePolicy.restartInPlace): the operator's side of the recovery
protocol (docs/training.md, "Recovery protocol: operator ↔ launcher"), pure.

A training process that fails inside a healthy pod does not cost a pod: its launcher
reports the failure on its control endpoint and waits, the other launchers report their
broken collectives and wait, and the operator decides for the whole world. This module
is that decision; `failover.policy` stays the judge (the same rules, backoff and
maxRestarts as for a failed pod), and a failed pod, a lost node or an unhealthy HPU never
reach it (`failover.policy.step` handles those first, by recreating pods).

`step` reads the job's status and the launchers' statuses and returns an `Outcome` like
`failover.policy.step`'s, plus the decision to post to every launcher (`deliver`). The
commit point is `status.inPlaceGeneration`: it is written (with `restarts` and
`lastFailure`) before any launcher hears of it, and a launcher that reports an older
generation is told again on every pass, so a decision outlives an operator crash.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from gaudi_operator.api import (
    FailureAction,
    FailurePolicy,
    FailureReason,
    RestartStrategy,
    parse_rfc3339,
)
from gaudi_operator.failover import policy as failover
from gaudi_operator.failover.policy import Failure, Outcome, PodFacts, Verdict
from gaudi_train import control_protocol as protocol
from gaudi_train.control_protocol import Decision as LauncherDecision
from gaudi_train.control_protocol import LauncherStatus

# The Restarting condition's reason while the world re-forms in its own pods.
IN_PLACE = "InPlaceRestart"
# ... and once the in-place restart is given up for recreating the pods.
IN_PLACE_FALLBACK = "InPlaceRestartFailed"
RECOVERED_IN_PLACE = "RecoveredInPlace"
# A launcher whose worker hangs on a hung peer reaches `waiting` within the launcher's
# GAUDI3_LEAVE_TIMEOUT (30 s); past that and a margin, decide with what is known.
SETTLE_SECONDS = 35.0
# The world must run again at the new generation within this long, else the pods are
# recreated and the world resumes from the checkpoint (the protocol's suggestion).
DEADLINE_SECONDS = 120.0
# Launcher states in which its part of the world is settled: out of it, or on its way out.
_SETTLED = frozenset({protocol.WAITING, protocol.STOPPING, protocol.SUCCEEDED})


def to_failure(root: protocol.Failure, pods: Mapping[str, PodFacts], now: datetime) -> Failure:
    """A launcher's root failure as failover's `Failure`: reason Error, with the process's
    exit code (128 + N for signal N, as the kubelet reports a container's), so that
    `failurePolicy.rules[].exitCodes` match it as they match a failed pod's."""
    pod = pods.get(root.pod)
    when = parse_rfc3339(root.time) or now
    if root.kind == protocol.PROCESS_EXIT:
        sig = f", {root.signal}" if root.signal else ""
        message = (
            f"training process rank {root.rank} (local rank {root.local_rank}) exited with "
            f"code {root.exit_code}{sig} at step {root.step} in a healthy pod"
        )
    else:
        message = f"the world broke ({root.kind}): {root.message}".rstrip(": ")
    return Failure(
        FailureReason.ERROR,
        when,
        root.pod or None,
        root.node or (pod.node if pod else None),
        root.worker_index if root.worker_index is not None else (pod.index if pod else None),
        root.exit_code,
        message,
        pod.uid if pod else None,
    )


def same_failure(last: Any, failure: Failure) -> bool:
    """`status.lastFailure` already records this failure (a pass that runs again)."""
    return (
        last is not None
        and last.pod == failure.pod
        and last.time == failover.to_rfc3339(failure.time)
        and last.exit_code == failure.exit_code
    )


def _restarting(status: Any) -> Any:
    return next((c for c in status.conditions if c.type == failover.RESTARTING), None)


def in_flight(status: Any) -> bool:
    """An in-place restart was decided and the world has not re-formed yet."""
    cond = _restarting(status)
    return cond is not None and cond.status == "True" and cond.reason == IN_PLACE


def step(
    policy: FailurePolicy,
    status: Any,  # api.GaudiTrainingJobStatus, updated in place
    world: Sequence[PodFacts],
    replicas: int,
    launchers: Mapping[str, LauncherStatus],
    now: datetime,
    unreachable: frozenset[str] = frozenset(),
) -> Outcome:
    """One pass of in-place recovery over the current world's pods (all healthy: pod
    failures were `failover.policy.step`'s). Records in `status` what it decides."""
    generation = status.in_place_generation
    pods = {p.name: p for p in world}
    heard = {name: s for name, s in launchers.items() if name in pods}
    out = Outcome(failover.FailoverDecision(Verdict.NONE, restarts=status.restarts))
    out.in_place = True

    # A launcher ahead of the status: the status write of its decision was lost. Nobody
    # can tell what the others took: recreate the world (docs/training.md, step 5).
    ahead = sorted(n for n, s in heard.items() if s.in_place_generation > generation)
    if ahead:
        return _fall_back(
            out,
            status,
            f"launcher of {', '.join(ahead)} is at in-place generation "
            f"{heard[ahead[0]].in_place_generation}, the job's status at {generation}",
        )

    # A warm spare holds a world index (it took a lost worker's place: spec.workers.spares):
    # the world re-forms with it, its ranks served by a surviving replica. The loss was
    # judged and counted when failover wrote the pod off; this re-form counts nothing.
    joining = sorted(n for n, s in heard.items() if s.spare)
    if joining and not in_flight(status):
        took = ", ".join(f"{n} took the place of worker {pods[n].index}" for n in joining)
        live = {n: s for n, s in heard.items() if s.state != protocol.STOPPING}
        return _reform(out, status, live, replicas, f"warm spare {took}")

    current = {n: s for n, s in heard.items() if s.in_place_generation == generation}
    failures = [
        f for s in current.values() for f in s.failures if f.in_place_generation == generation
    ]
    broken = [n for n, s in current.items() if s.state == protocol.WAITING]
    if broken and failures:
        causes = {f.kind for f in failures}
        if causes == {protocol.PEER_STOPPED} and set(broken) == set(pods):
            # Only a pod that was told to stop (a scale-down's surplus worker): the rest
            # checkpointed the same step and wait for a world of the new size.
            return _reform(out, status, current, replicas, "a worker left the world")
        return _judge(out, policy, status, pods, current, failures, replicas, now, unreachable)
    everyone = len(pods) == replicas and set(heard) == set(pods)
    sizes = {s.world_pods for s in current.values() if s.state == protocol.RUNNING}
    if everyone and sizes and sizes != {replicas} and not in_flight(status):
        # A resize (workers.replicas changed): new pods start at this generation, the
        # running ones are told to re-form with them (peers serve the state).
        return _reform(out, status, current, replicas, f"resized to {replicas} workers")

    # Decided already: deliver to whoever has not taken it, and watch the world re-form.
    if generation > 0:
        out.deliver = LauncherDecision(generation, protocol.RESTART, world_pods=replicas)
    out.deliver_to = sorted(
        n
        for n, s in heard.items()
        if s.in_place_generation < generation and s.state != protocol.STOPPING
    )
    if not in_flight(status):
        return out
    cond = _restarting(status)
    if everyone and protocol.WorldView(heard).running(generation):
        out.condition = (
            False,
            RECOVERED_IN_PLACE,
            f"the world re-formed in its pods at in-place generation {generation}",
        )
        return out
    since = parse_rfc3339(cond.last_transition_time) if cond is not None else None
    left = DEADLINE_SECONDS - ((now - since).total_seconds() if since else 0.0)
    if left <= 0:
        waiting = sorted(
            n
            for n in pods
            if n not in heard
            or heard[n].state != protocol.RUNNING
            or heard[n].in_place_generation != generation
        )
        return _fall_back(
            out,
            status,
            f"the world did not run again at in-place generation {generation} within "
            f"{DEADLINE_SECONDS:.0f}s (not running: {', '.join(waiting) or 'none'})",
        )
    out.restarting = True
    out.decision.requeue_after = left
    return out


def _judge(
    out: Outcome,
    policy: FailurePolicy,
    status: Any,
    pods: Mapping[str, PodFacts],
    current: Mapping[str, LauncherStatus],
    failures: Sequence[protocol.Failure],
    replicas: int,
    now: datetime,
    unreachable: frozenset[str] = frozenset(),
) -> Outcome:
    """The world of `status.inPlaceGeneration` broke: settle, then judge its root failure
    with the job's rules, and restart in place or fail."""
    generation = status.in_place_generation
    root = protocol.root_failure(failures)
    assert root is not None
    failure = to_failure(root, pods, now)
    first = min((parse_rfc3339(f.time) or now for f in failures), default=now)
    settled = all(n in current and current[n].state in _SETTLED for n in pods)
    wait = SETTLE_SECONDS - (now - first).total_seconds()
    decision = failover.decide(
        policy,
        [failure],
        restarts=status.restarts,
        excluded_nodes=status.excluded_nodes,
        replicas=replicas,
        now=now,
    )
    if not settled and wait > 0 and decision.verdict != Verdict.FAIL:
        # Decide once every launcher of the world is out of it (the protocol's step 3):
        # their reports wake the operator; a cause may still come from another pod.
        out.decision.requeue_after = wait
        out.restarting = True
        return out
    # A launcher that stopped answering is a lost pod or node, not a process to restart
    # in place: the pod watch (it failed) or the node watch (NotReady past the grace)
    # decides, with spares if there are. In place only if neither did within the deadline.
    lost = [
        n for n in pods if n in unreachable and not (n in current and current[n].state in _SETTLED)
    ]
    hold = DEADLINE_SECONDS - (now - first).total_seconds()
    if lost and hold > 0 and decision.verdict != Verdict.FAIL:
        out.decision.requeue_after = hold
        out.restarting = True
        return out
    # No pod is deleted or replaced, whatever restartStrategy says: the world re-forms.
    decision.strategy, decision.new_generation = None, False
    decision.pods_to_delete, decision.replace_indices = [], []
    out.decision = decision
    new_failure = not same_failure(status.last_failure, failure)
    if new_failure:
        out.new_failures = [failure]
        out.events.append(("Warning", "WorkerFailed", failure.describe()))
    status.last_failure = failure.to_last_failure()
    if decision.verdict == Verdict.FAIL:
        why = (
            failover.FAIL_BY_RULE
            if decision.action == FailureAction.FAIL
            else failover.RESTART_LIMIT
        )
        out.fail = (why, decision.message)
        out.condition = (False, why, decision.message)
        status.in_place_generation = generation + 1
        out.deliver = _decision(generation + 1, protocol.FAIL, None, decision.message)
        out.deliver_to = sorted(current)
        return out
    out.restarting = True
    if decision.verdict == Verdict.WAIT:
        out.condition = (True, IN_PLACE, decision.message)
        if new_failure:
            out.events.append(("Normal", "RestartBackoff", decision.message))
        return out
    # RESTART, in place: the commit point is the status write of the new generation.
    status.restarts = decision.restarts
    status.in_place_generation = generation + 1
    if status.progress is not None:
        status.progress.time = failover.to_rfc3339(now)  # a full stall timeout again
    counted = (
        f"restart {decision.restarts}/{policy.max_restarts}"
        if decision.counted
        else "not counted against maxRestarts"
    )
    message = (
        f"{failure.describe()}; restarting the world in its {replicas} pods "
        f"(in-place generation {generation + 1}, {counted})"
    )
    decision.message = message
    out.condition = (True, IN_PLACE, message)
    out.events.append(("Normal", "RestartingInPlace", message))
    out.deliver = _decision(generation + 1, protocol.RESTART, replicas, message)
    out.deliver_to = sorted(current)
    return out


def _decision(generation: int, action: str, world_pods: int | None, note: str) -> LauncherDecision:
    """What the launchers are told; `note` is free text each launcher logs (its field is
    called `reason`, but it is no Kubernetes reason)."""
    return LauncherDecision(generation, action, world_pods=world_pods, reason=note)


def _reform(
    out: Outcome, status: Any, current: Mapping[str, LauncherStatus], replicas: int, why: str
) -> Outcome:
    """Re-form the world in place without a failure to judge (nothing counted)."""
    generation = status.in_place_generation + 1
    status.in_place_generation = generation
    message = (
        f"{why}: re-forming the world of {replicas} workers in place "
        f"(in-place generation {generation}, not counted)"
    )
    out.condition = (True, IN_PLACE, message)
    out.events.append(("Normal", "RestartingInPlace", message))
    out.restarting = True
    out.decision = failover.FailoverDecision(
        Verdict.RESTART, restarts=status.restarts, message=message
    )
    out.deliver = _decision(generation, protocol.RESTART, replicas, message)
    out.deliver_to = sorted(current)
    return out


def _fall_back(out: Outcome, status: Any, why: str) -> Outcome:
    """Give up the in-place restart: recreate every pod (a new restart generation), which
    resumes from the checkpoint. Not counted again: the failure was counted when it was
    judged."""
    status.restart_generation += 1
    status.replaced_pods = None
    message = f"{why}; recreating all workers (restart generation {status.restart_generation})"
    out.condition = (True, IN_PLACE_FALLBACK, message)
    out.events.append(("Warning", IN_PLACE_FALLBACK, message))
    out.restarting = True
    out.in_place = True
    out.decision = failover.FailoverDecision(
        Verdict.RESTART,
        strategy=RestartStrategy.RECREATE_ALL,
        restarts=status.restarts,
        new_generation=True,
        message=message,
    )
    return out
