"""What templates/admission-policy.yaml renders from admissionPolicy.*: the policy and its
binding, switched off, narrowed to the watched namespaces, widened per namespace;
bad values refused by the schema. The policy's behaviour is proved against the real API
server in tests/cluster/chart/test_admission_policy.py; kubeconform checks the objects in
test_rendered_manifests.py."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from gaudi_devtools.realtraining import HOST_ACCESS_LABELS
from unit.chart.chart_tools import CHART, helm

NAME = "gaudi-gaudi-operator-tenants"


def render(tmp_path: Path, *sets: str, values: dict[str, Any] | None = None) -> dict[str, dict]:
    """The rendered objects by kind."""
    extra = list(sets)
    if values is not None:
        file = tmp_path / "values.json"
        file.write_text(json.dumps(values))
        extra += ["-f", str(file)]
    out = helm("template", "gaudi", str(CHART), "-n", "gaudi-system", *extra).stdout
    return {d["kind"]: d for d in yaml.safe_load_all(out) if d}


def test_by_default_the_policy_denies_in_every_namespace(tmp_path: Path) -> None:
    docs = render(tmp_path)
    vap, binding = docs["ValidatingAdmissionPolicy"], docs["ValidatingAdmissionPolicyBinding"]
    assert vap["apiVersion"] == binding["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert vap["metadata"]["name"] == binding["spec"]["policyName"] == NAME
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert binding["spec"]["matchResources"] == {"namespaceSelector": {}}
    assert vap["spec"]["failurePolicy"] == "Fail"
    # No paramKind and every version: nothing the API server looks up in its admission
    # plugins' shared RESTMapper when the policy loads (the template says why).
    assert "paramKind" not in vap["spec"] and "paramRef" not in binding["spec"]
    (rule,) = vap["spec"]["matchConstraints"]["resourceRules"]
    assert rule["apiVersions"] == ["*"]
    assert rule["resources"] == ["gauditrainingjobs"]  # not /status, /scale
    assert rule["operations"] == ["CREATE", "UPDATE"]
    assert "ConfigMap" not in docs


def test_every_refusal_is_forbidden_and_names_a_field_under_the_template(tmp_path: Path) -> None:
    validations = render(tmp_path)["ValidatingAdmissionPolicy"]["spec"]["validations"]
    assert len(validations) == 9
    for v in validations:
        assert v["reason"] == "Forbidden"
        assert v["message"].startswith("spec.template.spec"), v  # if the expression fails
        assert "'spec.template.spec" in v["messageExpression"], v


def test_switched_off_renders_no_policy(tmp_path: Path) -> None:
    kinds = render(tmp_path, "--set", "admissionPolicy.enabled=false")
    assert "ValidatingAdmissionPolicy" not in kinds
    assert "ValidatingAdmissionPolicyBinding" not in kinds


def test_with_watch_namespaces_the_binding_covers_only_those(tmp_path: Path) -> None:
    values = {
        "watchNamespaces": ["team-a", "team-b"],
        "admissionPolicy": {
            "namespaceSelector": {"matchLabels": {"tenant": "true"}},
            "validationActions": ["Warn", "Audit"],
        },
    }
    binding = render(tmp_path, values=values)["ValidatingAdmissionPolicyBinding"]["spec"]
    assert binding["validationActions"] == ["Warn", "Audit"]
    assert binding["matchResources"]["namespaceSelector"] == {
        "matchLabels": {"tenant": "true"},
        "matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "In",
             "values": ["team-a", "team-b"]}
        ],
    }  # fmt: skip


def test_the_values_widening_becomes_cel_literals_in_the_policy(tmp_path: Path) -> None:
    values = {
        "admissionPolicy": {
            "allow": ["node-name"],
            "serviceAccounts": ["default", "shared"],
            "namespaces": {
                "gaudi-demo": {"allow": ["host-network", "host-path"]},
                "team-a": {"serviceAccounts": ["trainer", "builder"]},
            },
        }
    }
    vap = render(tmp_path, values=values)["ValidatingAdmissionPolicy"]["spec"]
    variables = {v["name"]: v["expression"] for v in vap["variables"]}
    assert variables["granted"] == (
        '["node-name"] + {"gaudi-demo":["host-network","host-path"],"team-a":[]}'
        "[?request.namespace].orValue([])"
    )
    assert variables["serviceAccounts"].startswith(
        '["default","shared"] + {"gaudi-demo":[],"team-a":["trainer","builder"]}'
        "[?request.namespace].orValue([])"
    )
    defaults = render(tmp_path)["ValidatingAdmissionPolicy"]["spec"]["variables"]
    assert {v["name"]: v["expression"] for v in defaults}["granted"] == (
        "[] + {}[?request.namespace].orValue([])"
    )


def test_the_dev_tools_label_what_the_policy_reads(tmp_path: Path) -> None:
    # gaudi_devtools.realtraining labels the real-node jobs' namespaces with these.
    variables = render(tmp_path)["ValidatingAdmissionPolicy"]["spec"]["variables"]
    read = {
        m.group(1)
        for v in variables
        for m in re.finditer(r"variables\.labels\[\?'([^']+)'\]", v["expression"])
    }
    assert set(HOST_ACCESS_LABELS) <= read, read
    assert set(HOST_ACCESS_LABELS.values()) == {"true"}


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("admissionPolicy.validationActions={Deny,Warn}", "'/admissionPolicy/validationActions'"),
        ("admissionPolicy.validationActions={Block}", "'/admissionPolicy/validationActions/0'"),
        ("admissionPolicy.validationActions=null", "missing property 'validationActions'"),
        ("admissionPolicy.allow={host-ipc}", "'/admissionPolicy/allow/0': value must be one of"),
        (
            "admissionPolicy.namespaces.Team_A.allow={host-path}",
            "'/admissionPolicy/namespaces': additional properties 'Team_A' not allowed",
        ),
        (
            "admissionPolicy.namespaces.team-a.allowed={host-path}",
            "'/admissionPolicy/namespaces/team-a': additional properties 'allowed'",
        ),
        ("admissionPolicy.serviceAccounts={Builder}", "'/admissionPolicy/serviceAccounts/0'"),
        ("admissionPolicy.enabled=yes", "'/admissionPolicy/enabled': got string, want boolean"),
    ],
)
def test_a_bad_policy_value_fails_rendering_and_names_its_path(setting: str, named: str) -> None:
    out = helm("template", "gaudi", str(CHART), "--set", setting, check=False)
    assert out.returncode != 0, f"--set {setting} was accepted"
    assert named in out.stderr, out.stderr
