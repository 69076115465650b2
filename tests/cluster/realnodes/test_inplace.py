"""Restart in place on the real nodes (failurePolicy.restartInPlace, docs/failover.md): a
GaudiTrainingJob of two worker pods trains in the CPU image; a training process is
SIGKILLed inside its healthy pod and this tree's operator, told by the launchers, restarts
the world in the same pods. Compared with an uninterrupted run of the same job: the loss
at the first new step must be the uninterrupted run's, to the last printed digit.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster.gtj import OperatorProcess
from cluster.realnodes.conftest import training_operator
from conftest import wait_for
from gaudi_devtools import realtraining
from gaudi_devtools.realtraining import TRAINER_UID, job, launcher_pid, worker_pids

pytestmark = pytest.mark.real_training

REFERENCE_STEPS = 45
STEP = re.compile(r"step (\d+) loss ([0-9.]+)")


@pytest.fixture(scope="module")
def operator(real: Any) -> Iterator[OperatorProcess]:
    with training_operator(real, "operator-inplace.log") as op:
        yield op


@pytest.fixture(scope="module")
def space(real: Any, operator: OperatorProcess) -> Iterator[tuple[str, Path]]:
    ns = f"inplace-{os.getpid()}"
    root = real.dir / "checkpoints" / ns
    root.mkdir(parents=True)
    real.kubectl("create", "namespace", ns)
    realtraining.allow_host_access(real, ns)
    wait_for(
        lambda: real.kubectl("get", "sa", "default", "-n", ns, check=False).returncode == 0,
        timeout=30,
        what="the default service account",
    )
    try:
        yield ns, root
    finally:
        real.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture
def jobs(real: Any, space: tuple[str, Path]) -> Iterator[list[str]]:
    """Names of the jobs a test started: deleted after it, and their pods gone (host
    network: they hold the nodes' ports), whatever the test's outcome."""
    started: list[str] = []
    yield started
    ns, _ = space
    for name in started:
        real.kubectl("delete", "gtj", name, "-n", ns, "--ignore-not-found", "--wait=true")
    sel = f"{realtraining.GROUP}/job-name"
    wait_for(
        lambda: not real.kubectl("get", "pods", "-n", ns, "-l", sel, "-o", "name").stdout.strip(),
        timeout=120,
        what="the jobs' pods gone",
    )


def start(real: Any, ns: str, root: Path, name: str, **kw: Any) -> Path:
    checkpoints = root / name
    checkpoints.mkdir()
    os.chown(checkpoints, TRAINER_UID, -1)
    policy = {"restartInPlace": True, "backoffSeconds": 0, "maxRestarts": 5, **kw.pop("policy", {})}
    body = job(name, checkpoints, log_every=1, failure_policy=policy, **kw)
    real.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(body))
    return checkpoints


def trained(real: Any, ns: str, name: str, steps: int) -> None:
    """Rank 0 logged `steps` steps."""
    wait_for(
        lambda: max(losses(text(real, ns, name)), default=0) >= steps,
        timeout=240,
        interval=1,
        what=f"{steps} training steps",
    )


def text(real: Any, ns: str, name: str) -> str:
    return realtraining.logs(real, ns, name, 0)


def losses(log: str) -> dict[int, str]:
    return {int(s): loss for s, loss in STEP.findall(log)}


def status(real: Any, ns: str, name: str) -> dict[str, Any]:
    got = json.loads(real.kubectl("get", "gtj", name, "-n", ns, "-o", "json").stdout)
    return dict(got.get("status") or {})


def pods(real: Any, ns: str, name: str) -> dict[str, str]:
    """Pod name -> uid of the job's workers."""
    sel = f"{realtraining.GROUP}/job-name={name}"
    got = json.loads(real.kubectl("get", "pods", "-n", ns, "-l", sel, "-o", "json").stdout)
    return {p["metadata"]["name"]: p["metadata"]["uid"] for p in got["items"]}


def condition(st: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in st.get("conditions") or [] if c["type"] == type_), {})


def kill_workers(ns: str, name: str, indices: list[int]) -> None:
    victims = []
    for i in indices:
        launcher = launcher_pid(ns, name, i)
        assert launcher is not None, f"worker {i}'s launcher on this machine"
        found = worker_pids(launcher)
        assert len(found) == 1, f"worker {i}'s training process: {found}"
        victims += found
    for pid in victims:
        os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def reference(real: Any, space: tuple[str, Path]) -> dict[int, str]:
    """The same job, uninterrupted, to REFERENCE_STEPS: {step: loss as logged}."""
    ns, root = space
    start(real, ns, root, "reference", max_steps=REFERENCE_STEPS)
    wait_for(
        lambda: status(real, ns, "reference").get("phase") == "Succeeded",
        timeout=300,
        interval=2,
        what="the uninterrupted run to finish",
    )
    found = losses(text(real, ns, "reference"))
    assert sorted(found) == list(range(1, REFERENCE_STEPS + 1))
    # Its pods have exited; their host ports are free for the next job.
    real.kubectl("delete", "gtj", "reference", "-n", ns, "--wait=true")
    return found


def trial(
    real: Any, ns: str, name: str, killed: tuple[float, int], before: int, without: str = ""
) -> Any:
    got = wait_for(
        lambda: realtraining.in_place_trial(real, ns, name, killed, before, without=without),
        timeout=120,
        interval=0.5,
        what="the first step of the re-formed world",
    )
    assert isinstance(got, realtraining.InPlaceTrial)
    return got


def recovered(real: Any, ns: str, name: str, generation: int) -> dict[str, Any]:
    st = wait_for(
        lambda: (
            (s := status(real, ns, name)).get("inPlaceGeneration") == generation
            and condition(s, "Restarting").get("reason") == "RecoveredInPlace"
            and s
        ),
        timeout=120,
        interval=0.5,
        what=f"the world running again at in-place generation {generation}",
    )
    assert isinstance(st, dict)
    return st


def test_a_killed_process_restarts_in_its_pod_from_a_peer_then_a_dead_world_from_the_checkpoint(
    real: Any,
    operator: OperatorProcess,
    space: tuple[str, Path],
    reference: dict[int, str],
    jobs: list[str],
) -> None:
    ns, root = space
    name = "inplace"
    jobs.append(name)
    checkpoints = start(real, ns, root, name)
    trained(real, ns, name, 6)
    uids = pods(real, ns, name)
    assert len(uids) == 2

    # 1. One training process dies in a healthy pod: the same pods, state from the peer.
    killed = realtraining.kill_training_process(real, ns, name, 1)
    t = trial(real, ns, name, killed, 0)
    st = recovered(real, ns, name, 1)
    assert st["restarts"] == 1 and st["restartGeneration"] == 0
    last = st["lastFailure"]
    assert (last["pod"], last["exitCode"], last["reason"]) == (f"{name}-worker-1", 137, "Error")
    assert t.source.startswith("peer rank") and t.redone == 0, t
    assert t.first_loss == reference[t.resumed_from + 1], (t, reference[t.resumed_from + 1])
    assert pods(real, ns, name) == uids  # no pod replaced
    print(f"in place, from a peer: kill -> first new step {t.seconds:.2f} s {t.phases} ({t})")

    # 2. Every replica dies: the same pods again, the world loads the last checkpoint.
    saved = realtraining.checkpoint_steps(checkpoints)[-1]
    before = realtraining.resume_count(real, ns, name)
    seen = max(losses(text(real, ns, name)))
    at = time.time()
    kill_workers(ns, name, [0, 1])
    t = trial(real, ns, name, (at, seen), before)
    st = recovered(real, ns, name, 2)
    assert st["restarts"] == 2 and st["restartGeneration"] == 0
    assert t.source == "checkpoint" and t.resumed_from >= saved, t
    assert t.first_loss == reference[t.resumed_from + 1], (t, reference[t.resumed_from + 1])
    assert pods(real, ns, name) == uids
    print(f"in place, every replica died: {t.seconds:.2f} s {t.phases} ({t})")

    # 3. The operator dies right after it committed the decision (inPlaceGeneration 3),
    # before any launcher heard of it: the next operator tells them, counting nothing twice.
    operator.stop()
    operator.env = {"GAUDI3_FAILPOINTS": "after-restart-intent"}
    try:
        operator.start()
        before = realtraining.resume_count(real, ns, name)
        killed = realtraining.kill_training_process(real, ns, name, 0)
        wait_for(lambda: operator.proc.poll() is not None, timeout=60, what="the crash")
        st = status(real, ns, name)
        assert st["inPlaceGeneration"] == 3 and st["restarts"] == 3
        assert realtraining.resume_count(real, ns, name) == before  # nobody was told
    finally:
        operator.env = {}
        if operator.proc is None or operator.proc.poll() is not None:
            operator.start()
    t = trial(real, ns, name, killed, before)
    st = recovered(real, ns, name, 3)
    assert st["restarts"] == 3 and st["restartGeneration"] == 0
    assert t.source.startswith("peer rank") and t.redone == 0, t
    assert t.first_loss == reference[t.resumed_from + 1], (t, reference[t.resumed_from + 1])
    assert pods(real, ns, name) == uids


def test_an_exit_code_a_fail_rule_names_fails_the_job_though_its_pods_are_healthy(
    real: Any, space: tuple[str, Path], jobs: list[str]
) -> None:
    ns, root = space
    name = "failrule"
    jobs.append(name)
    start(real, ns, root, name, policy={"rules": [{"exitCodes": [137], "action": "Fail"}]})
    trained(real, ns, name, 3)
    kill_workers(ns, name, [1])
    st = wait_for(
        lambda: (s := status(real, ns, name)).get("phase") == "Failed" and s,
        timeout=60,
        interval=0.5,
        what="the job to fail",
    )
    assert isinstance(st, dict)
    assert condition(st, "Failed").get("reason") == "FailurePolicyRule"
    assert st["restarts"] == 0 and st["lastFailure"]["exitCode"] == 137
    assert st["lastFailure"]["pod"] == f"{name}-worker-1" and st["restartGeneration"] == 0


def labels_of(real: Any, ns: str, pod: str) -> dict[str, str]:
    got = json.loads(real.kubectl("get", "pod", pod, "-n", ns, "-o", "json").stdout)
    return dict(got["metadata"].get("labels") or {})


def wait_warm(real: Any, ns: str, pod: str) -> None:
    """The spare's launcher forked its worker (torch and the model imported) and waits."""
    wait_for(
        lambda: "-> spare: warm" in real.kubectl("logs", pod, "-n", ns, check=False).stdout,
        timeout=180,
        interval=1,
        what=f"{pod} waiting warm",
    )


def resumes_outside(real: Any, ns: str, name: str, pod: str) -> int:
    """Resume lines in the job's pods but `pod` (about to be deleted: its log goes too)."""
    texts = realtraining.pod_logs(real, ns, name, 0)
    return sum(
        len(realtraining.INPLACE_RESUME_LINE.findall(t)) for p, t in texts.items() if p != pod
    )


def test_a_deleted_worker_is_replaced_by_a_warm_spare_then_worker_0_by_the_refilled_one(
    real: Any,
    operator: OperatorProcess,
    space: tuple[str, Path],
    reference: dict[int, str],
    jobs: list[str],
) -> None:
    ns, root = space
    name = "spares"
    jobs.append(name)
    start(real, ns, root, name, spares=1)
    trained(real, ns, name, 6)
    wait_warm(real, ns, f"{name}-spare-0")
    uids = pods(real, ns, name)
    assert sorted(uids) == [f"{name}-spare-0", f"{name}-worker-0", f"{name}-worker-1"]

    # 1. Worker 1's pod is deleted: spare 0 takes index 1 (no pod scheduled or started),
    # the world re-forms in place, rank 0 (worker 0) serves the state: 0 steps redone.
    before = resumes_outside(real, ns, name, f"{name}-worker-1")
    at, seen = time.time(), max(losses(text(real, ns, name)))
    real.kubectl("delete", "pod", f"{name}-worker-1", "-n", ns, "--wait=false")
    t = trial(real, ns, name, (at, seen), before, f"{name}-worker-1")
    st = recovered(real, ns, name, 1)
    assert st["restartGeneration"] == 0 and st["restarts"] == 1
    assert st["lastFailure"]["pod"] == f"{name}-worker-1"
    assert labels_of(real, ns, f"{name}-spare-0").get(f"{realtraining.GROUP}/worker-index") == "1"
    assert pods(real, ns, name)[f"{name}-spare-0"] == uids[f"{name}-spare-0"]  # the same pod
    assert t.source.startswith("peer rank") and t.redone == 0, t
    assert t.first_loss == reference[t.resumed_from + 1], (t, reference[t.resumed_from + 1])
    print(f"spare takes worker 1: delete -> first new step {t.seconds:.2f} s {t.phases} ({t})")
    events = real.kubectl(
        "get", "events", "-n", ns, "--field-selector", f"involvedObject.name={name}", "-o", "json"
    ).stdout
    assert "SpareTookOver" in events

    # 2. The pool is refilled (on the node worker 1 left), then worker 0's pod is deleted:
    # spare 1 takes index 0 and hosts the world's store at its own address.
    wait_warm(real, ns, f"{name}-spare-1")
    before = resumes_outside(real, ns, name, f"{name}-worker-0")
    at, seen = time.time(), max(losses(text(real, ns, name)))
    real.kubectl("delete", "pod", f"{name}-worker-0", "-n", ns, "--wait=false")
    t = trial(real, ns, name, (at, seen), before, f"{name}-worker-0")
    st = recovered(real, ns, name, 2)
    assert st["restartGeneration"] == 0 and st["restarts"] == 2
    assert labels_of(real, ns, f"{name}-spare-1").get(f"{realtraining.GROUP}/worker-index") == "0"
    # The store's host went with worker 0. Usually the survivor serves the state at once;
    # once in eight observed runs (a loaded machine) its process did not leave the old world
    # and was killed after the launcher's 30 s leave timeout, and the world loaded the
    # checkpoint its coordinated stop had just written (docs/failover.md, Warm spares,
    # Limits). Either way nothing is redone and the loss goes on exactly.
    assert t.source.startswith("peer rank") or t.source == "checkpoint", t
    assert t.redone == 0, t
    assert t.first_loss == reference[t.resumed_from + 1], (t, reference[t.resumed_from + 1])
    print(f"spare takes worker 0: delete -> first new step {t.seconds:.2f} s {t.phases} ({t})")
    # A third spare is started for the pool (the freed node) and the job runs on.
    wait_for(
        lambda: f"{name}-spare-2" in pods(real, ns, name),
        timeout=60,
        interval=0.5,
        what="a third spare for the pool",
    )
    assert status(real, ns, name)["phase"] == "Running"
