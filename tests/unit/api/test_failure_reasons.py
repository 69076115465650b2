"""The failure reasons a rule can match: the CRD's enum and its CEL list of infrastructure
reasons are the operator's FailureReason and INFRASTRUCTURE_REASONS."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from gaudi_operator.api import INFRASTRUCTURE_REASONS, FailureReason

CRD = Path(__file__).parents[3] / "crds" / "gauditrainingjobs.yaml"


def rule_item() -> dict[str, Any]:
    spec = yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    policy = spec["properties"]["spec"]["properties"]["failurePolicy"]
    return policy["properties"]["rules"]["items"]


def test_rules_can_name_every_failure_reason_and_only_those() -> None:
    reasons = rule_item()["properties"]["reasons"]
    assert set(reasons["items"]["enum"]) == {r.value for r in FailureReason}
    assert reasons["maxItems"] >= len(FailureReason)  # a set that lists them all fits


def test_restart_ignore_limit_takes_exactly_the_infrastructure_reasons() -> None:
    [cel] = [
        v for v in rule_item()["x-kubernetes-validations"] if "RestartIgnoreLimit" in v["rule"]
    ]
    listed = re.search(r"r in \[([^\]]*)\]", cel["rule"])
    assert listed is not None
    assert set(re.findall(r"'(\w+)'", listed.group(1))) == {r.value for r in INFRASTRUCTURE_REASONS}
    for reason in INFRASTRUCTURE_REASONS:
        assert reason.value in cel["message"]
    assert FailureReason.SCALE_OUT_LINK_DOWN in INFRASTRUCTURE_REASONS
