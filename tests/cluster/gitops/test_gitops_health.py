"""What Argo CD, Flux and `kubectl wait` conclude about jobs the real operator drives into
each state: the Argo CD health script (deploy/argocd/) under a real Lua interpreter, Flux's
kstatus library, and kubectl itself.

The objects read here are also the fixtures of tests/unit/gitops: run with
GAUDI3_SAVE_STATUSES=1 to write them again (tests/unit/gitops/statuses/<name>.json).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from chaos import complete_pod, fail_pod, set_node_hpus
from cluster.gtj import (
    EXAMPLES,
    OperatorProcess,
    create_job,
    get_job,
    job_body,
    wait_phase,
    wait_running_workers,
)
from conftest import wait_for
from health_checks import STATUSES, argocd_health, kstatus

pytestmark = pytest.mark.cluster

SAVE = os.environ.get("GAUDI3_SAVE_STATUSES") == "1"


@pytest.fixture(scope="module")
def gitops_operator(operator: OperatorProcess) -> OperatorProcess:
    return operator


def verdicts(obj: dict[str, Any], name: str | None = None) -> tuple[str, str]:
    """(Argo CD health, kstatus) of a live object; saved as fixture `name` when asked."""
    if SAVE and name:
        saved = json.loads(json.dumps(obj))
        saved["metadata"].pop("managedFields", None)
        (STATUSES / f"{name}.json").write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    return argocd_health(obj)["status"], kstatus(obj)["status"]


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    conds = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conds if c["type"] == type_), {})


def wait_condition(
    custom: Any, ns: str, name: str, type_: str, reason: str | None = None, timeout: float = 60
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = get_job(custom, ns, name)
        c = condition(obj, type_)
        ok = c.get("status") == "True" and (reason is None or c.get("reason") == reason)
        return obj if ok else None

    what = f"{name}: {type_}{'/' + reason if reason else ''} True"
    return wait_for(check, timeout=timeout, what=what)  # type: ignore[return-value]


def kubectl_wait_ready(kubectl: Callable[..., Any], ns: str, name: str, timeout: str) -> Any:
    return kubectl(
        "wait",
        "--for=condition=Ready",
        f"gtj/{name}",
        "-n",
        ns,
        f"--timeout={timeout}",
        check=False,
        timeout=120,
    )


def test_a_running_job_is_healthy_current_and_kubectl_wait_ready_returns(
    gitops_operator: Any, core: Any, custom: Any, kubectl: Any, namespace: str, hpus_free: Any
) -> None:
    hpus_free()
    create_job(custom, namespace, job_body("trainer", hpusPerWorker=1, workers={"replicas": 2}))
    out = kubectl_wait_ready(kubectl, namespace, "trainer", "90s")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "gauditrainingjob.gaudi.scalestarter.dev/trainer condition met"
    obj = wait_phase(custom, namespace, "trainer", "Running")
    assert verdicts(obj, "running") == ("Healthy", "Current")
    st = obj["status"]
    assert st["observedGeneration"] == obj["metadata"]["generation"]
    assert {c["observedGeneration"] for c in st["conditions"]} == {st["observedGeneration"]}
    # Absent means False (kstatus): a job whose workers run within its first status's
    # hold goes from no status to Running in one write and never shows Reconciling.
    assert condition(obj, "Reconciling").get("status", "False") == "False"


def test_a_job_that_cannot_be_placed_is_progressing_and_never_ready(
    gitops_operator: Any, custom: Any, kubectl: Any, namespace: str
) -> None:
    nowhere = {"spec": {"nodeSelector": {"gaudi3.test/no-such-node": "true"}}}
    create_job(custom, namespace, job_body("unplaceable", hpusPerWorker=1, template=nowhere))
    obj = wait_condition(custom, namespace, "unplaceable", "Reconciling", "Pending")
    assert obj["status"]["phase"] == "Pending"
    assert verdicts(obj, "pending") == ("Progressing", "InProgress")
    out = kubectl_wait_ready(kubectl, namespace, "unplaceable", "5s")
    assert out.returncode != 0 and "timed out" in out.stderr


def test_a_restart_in_backoff_is_progressing(
    gitops_operator: Any, core: Any, custom: Any, namespace: str, hpus_free: Any
) -> None:
    hpus_free()
    body = job_body(
        "flaky", hpusPerWorker=1, workers={"replicas": 2}, failurePolicy={"backoffSeconds": 600}
    )
    create_job(custom, namespace, body)
    pods = wait_running_workers(core, namespace, "flaky", 2)
    fail_pod(core, namespace, pods[1].metadata.name, exit_code=1)
    obj = wait_condition(custom, namespace, "flaky", "Reconciling", "Restarting")
    assert "backoff" in condition(obj, "Reconciling")["message"]
    assert verdicts(obj, "restarting") == ("Progressing", "InProgress")


def test_a_succeeded_job_is_healthy_current_and_ready(
    gitops_operator: Any, core: Any, custom: Any, kubectl: Any, namespace: str, hpus_free: Any
) -> None:
    hpus_free()
    create_job(custom, namespace, job_body("finisher", hpusPerWorker=1))
    for pod in wait_running_workers(core, namespace, "finisher", 1):
        complete_pod(core, namespace, pod.metadata.name)
    obj = wait_phase(custom, namespace, "finisher", "Succeeded")
    assert verdicts(obj, "succeeded") == ("Healthy", "Current")
    assert kubectl_wait_ready(kubectl, namespace, "finisher", "10s").returncode == 0


def test_a_failed_job_is_degraded_and_stalled(
    gitops_operator: Any, core: Any, custom: Any, kubectl: Any, namespace: str, hpus_free: Any
) -> None:
    hpus_free()
    policy = {"rules": [{"exitCodes": [42], "action": "Fail"}]}
    create_job(custom, namespace, job_body("doomed", hpusPerWorker=1, failurePolicy=policy))
    pods = wait_running_workers(core, namespace, "doomed", 1)
    fail_pod(core, namespace, pods[0].metadata.name, exit_code=42)
    obj = wait_condition(custom, namespace, "doomed", "Stalled", "FailurePolicyRule")
    assert obj["status"]["phase"] == "Failed"
    assert verdicts(obj, "failed") == ("Degraded", "Failed")
    assert kubectl_wait_ready(kubectl, namespace, "doomed", "2s").returncode != 0


def test_worker_pods_the_api_server_refuses_are_degraded_and_stalled(
    gitops_operator: Any, custom: Any, namespace: str
) -> None:
    bad = {"spec": {"volumes": [{"name": "Not_A_DNS_Label", "emptyDir": {}}]}}
    create_job(custom, namespace, job_body("rejected", hpusPerWorker=1, template=bad))
    obj = wait_condition(custom, namespace, "rejected", "Stalled", "PodRejected")
    assert condition(obj, "Reconciling").get("status") != "True"
    assert verdicts(obj, "invalid-spec") == ("Degraded", "Failed")


def test_a_suspended_job_is_suspended_current_and_not_ready(
    gitops_operator: Any, custom: Any, kubectl: Any, namespace: str
) -> None:
    create_job(custom, namespace, job_body("parked", hpusPerWorker=1, suspend=True))
    obj = wait_phase(custom, namespace, "parked", "Suspended")
    assert condition(obj, "Ready") == {}
    assert verdicts(obj, "suspended") == ("Suspended", "Current")
    assert kubectl_wait_ready(kubectl, namespace, "parked", "3s").returncode != 0


def test_a_restart_no_node_can_take_is_degraded_and_stalled(
    gitops_operator: Any, core: Any, custom: Any, namespace: str, hpus_free: Any
) -> None:
    hpus_free()
    pinned = {"spec": {"nodeSelector": {"kubernetes.io/hostname": "gaudi3-node-3"}}}
    body = job_body(
        "pinned",
        hpusPerWorker=8,
        template=pinned,
        failurePolicy={"backoffSeconds": 0, "nodeFailureGraceSeconds": 1},
    )
    create_job(custom, namespace, body)
    wait_running_workers(core, namespace, "pinned", 1)
    # A Gaudi card of its only node turns unhealthy: the node is excluded, and the
    # replacement has nowhere else to go.
    set_node_hpus(core, "gaudi3-node-3", 6)
    try:
        obj = wait_condition(custom, namespace, "pinned", "Stalled", "NoFeasibleNode", 90)
    finally:
        set_node_hpus(core, "gaudi3-node-3", 8)
    assert condition(obj, "Restarting")["reason"] == "NoFeasibleNode"
    assert verdicts(obj, "no-feasible-node") == ("Degraded", "Failed")


def test_a_spec_change_or_a_job_the_operator_has_not_seen_is_progressing(
    gitops_operator: OperatorProcess, core: Any, custom: Any, kubectl: Any, namespace: str
) -> None:
    create_job(custom, namespace, job_body("edited", hpusPerWorker=1))
    wait_phase(custom, namespace, "edited", "Running")
    gitops_operator.stop()
    try:
        patch = '{"spec":{"args":["--steps","10"]}}'
        kubectl("patch", "gtj", "edited", "-n", namespace, "--type=merge", "-p", patch)
        obj = get_job(custom, namespace, "edited")
        assert obj["metadata"]["generation"] > obj["status"]["observedGeneration"]
        assert verdicts(obj, "generation-not-observed") == ("Progressing", "InProgress")
        create_job(custom, namespace, job_body("unseen", hpusPerWorker=1))
        unseen = get_job(custom, namespace, "unseen")
        assert "status" not in unseen
        # kstatus cannot tell a status-less object from a reconciled one (it says Current:
        # a limit of kstatus itself); the Argo CD script can.
        assert verdicts(unseen, "no-status") == ("Progressing", "Current")
    finally:
        gitops_operator.start()

    def caught_up() -> bool:
        obj = get_job(custom, namespace, "edited")
        return obj["status"]["observedGeneration"] == obj["metadata"]["generation"]

    wait_for(caught_up, timeout=60, what="the operator to observe the new generation")
    assert verdicts(get_job(custom, namespace, "edited")) == ("Healthy", "Current")


def test_the_examples_folder_applies_as_argo_cd_and_flux_would_apply_it(
    crd: Path, kubectl: Any, namespace: str
) -> None:
    # Argo CD's directory source (not recursive) and Flux's Kustomization in examples/gitops
    # both apply the top-level manifests of examples/: the API server accepts all of them.
    out = kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(EXAMPLES))
    applied = out.stdout.splitlines()
    docs = [
        d for f in sorted(EXAMPLES.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d
    ]
    assert len(applied) == len(docs) >= 6 and all("(server dry run)" in line for line in applied)
