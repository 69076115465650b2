"""The Argo CD health check (deploy/argocd/gauditrainingjob-health.lua) under a real Lua 5.1
interpreter, over objects the real operator wrote.

The objects in statuses/ were saved by tests/cluster/gitops/test_gitops_health.py, which
drives jobs into each state with the operator on the local cluster:
    GAUDI3_SAVE_STATUSES=1 python -m pytest tests/cluster/gitops/test_gitops_health.py
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from health_checks import KSTATUS, STATUSES, argocd_health, kstatus, load_statuses

# fixture -> (Argo CD health, what Flux's kstatus computes)
EXPECTED = {
    "running": ("Healthy", "Current"),
    "succeeded": ("Healthy", "Current"),
    "pending": ("Progressing", "InProgress"),
    "restarting": ("Progressing", "InProgress"),
    "generation-not-observed": ("Progressing", "InProgress"),
    "no-status": ("Progressing", "Current"),  # kstatus cannot tell: see the README
    "failed": ("Degraded", "Failed"),
    "invalid-spec": ("Degraded", "Failed"),
    "no-feasible-node": ("Degraded", "Failed"),
    "suspended": ("Suspended", "Current"),
}

SAVED = load_statuses()


def test_every_saved_status_has_an_expected_verdict_and_all_four_are_covered() -> None:
    assert set(SAVED) == set(EXPECTED)
    assert {argo for argo, _ in EXPECTED.values()} == {
        "Healthy",
        "Progressing",
        "Degraded",
        "Suspended",
    }


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_argo_cd_health_of_what_the_operator_wrote(name: str) -> None:
    health = argocd_health(SAVED[name])
    assert health["status"] == EXPECTED[name][0], health
    assert health["message"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_flux_kstatus_of_what_the_operator_wrote(name: str) -> None:
    if not KSTATUS.exists():
        pytest.skip(f"{KSTATUS} not built: bash hack/toolchain.sh kstatus")
    assert kstatus(SAVED[name])["status"] == EXPECTED[name][1]


def test_messages_say_why() -> None:
    assert argocd_health(SAVED["running"])["message"] == "Running: 2/2 workers ready"
    assert "backoff" in argocd_health(SAVED["restarting"])["message"]
    failed = argocd_health(SAVED["failed"])["message"]
    assert failed.startswith("Failed: ") and "exit code 42" in failed
    assert "Not_A_DNS_Label" in argocd_health(SAVED["invalid-spec"])["message"]
    assert argocd_health(SAVED["no-feasible-node"])["message"].startswith("NoFeasibleNode: ")
    assert "generation 2 (observed 1)" in argocd_health(SAVED["generation-not-observed"])["message"]


def with_status(name: str, **changes: Any) -> dict[str, Any]:
    obj = copy.deepcopy(SAVED[name])
    obj["status"].update(changes)
    return obj


def test_a_status_behind_the_spec_is_progressing_whatever_its_phase() -> None:
    for name in ("running", "failed", "suspended"):
        obj = copy.deepcopy(SAVED[name])
        obj["metadata"]["generation"] = obj["status"]["observedGeneration"] + 1
        assert argocd_health(obj)["status"] == "Progressing", name


def test_an_invalid_spec_wins_over_the_phase() -> None:
    invalid = next(
        c for c in SAVED["invalid-spec"]["status"]["conditions"] if c["type"] == "InvalidSpec"
    )
    for name in ("running", "suspended"):
        obj = with_status(name, conditions=[*SAVED[name]["status"]["conditions"], invalid])
        assert argocd_health(obj)["status"] == "Degraded", name


def test_an_operator_without_the_stalled_condition_still_reads_no_feasible_node_as_degraded() -> (
    None
):
    conds = [c for c in SAVED["no-feasible-node"]["status"]["conditions"] if c["type"] != "Stalled"]
    assert argocd_health(with_status("no-feasible-node", conditions=conds))["status"] == "Degraded"


def test_an_unknown_phase_is_unknown() -> None:
    health = argocd_health(with_status("running", phase="Hibernating"))
    assert health == {"status": "Unknown", "message": "Unknown phase Hibernating"}


def test_the_interpreter_has_only_what_argo_cd_gives_a_health_script(tmp_path: Path) -> None:
    # Argo CD opens only Lua's base and table libraries for custom checks: a script that
    # formats with the string library fails there, and must fail here too.
    script = tmp_path / "uses-string.lua"
    script.write_text(
        'hs = {}\nhs.status = "Healthy"\nhs.message = string.format("%d", 1)\nreturn hs\n'
    )
    with pytest.raises(Exception, match="string"):
        argocd_health(SAVED["running"], script)
    method = tmp_path / "uses-string-method.lua"
    method.write_text('hs = {status = "Healthy", message = ("ab"):upper()}\nreturn hs\n')
    with pytest.raises(Exception, match="string"):
        argocd_health(SAVED["running"], method)


def test_the_fixtures_are_what_the_operator_writes() -> None:
    # Objects from the API server, not hand-written: uid, resourceVersion, the operator's
    # selector and an observedGeneration on every condition.
    for name, obj in SAVED.items():
        assert obj["metadata"]["uid"] and obj["metadata"]["resourceVersion"], name
        if name == "no-status":
            continue
        st = obj["status"]
        assert st["selector"] == f"gaudi.scalestarter.dev/job-name={obj['metadata']['name']}"
        assert all("observedGeneration" in c for c in st["conditions"]), name
    assert sorted(p.stem for p in STATUSES.glob("*.json")) == sorted(SAVED)
