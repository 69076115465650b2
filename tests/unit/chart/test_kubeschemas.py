"""hack/kubeschemas.py: Kubernetes' OpenAPI dialect turned into the JSON Schema files, and
the file names, that kubeconform looks up."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from unit.chart.chart_tools import ROOT, SCHEMAS


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kubeschemas", ROOT / "hack" / "kubeschemas.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ks = _load()


@pytest.mark.parametrize(
    ("kind", "group", "version", "strict", "name"),
    [
        ("Service", "", "v1", True, "service-v1-strict.json"),
        ("Deployment", "apps", "v1", False, "deployment-apps-v1.json"),
        ("ClusterRole", "rbac.authorization.k8s.io", "v1", True, "clusterrole-rbac-v1-strict.json"),
        (
            "GaudiTrainingJob",
            "gaudi.scalestarter.dev",
            "v1alpha1",
            True,
            "gauditrainingjob-gaudi-v1alpha1-strict.json",
        ),
    ],
)
def test_file_names_follow_kubeconforms_template(
    kind: str, group: str, version: str, strict: bool, name: str
) -> None:
    # {{ .ResourceKind }}{{ .KindSuffix }}{{ .StrictSuffix }}.json: the group's first label.
    assert ks.file_name(kind, group, version, strict) == name


def test_strict_closes_listed_properties_but_not_open_maps_or_preserved_fields() -> None:
    schema = {
        "type": "object",
        "properties": {
            "spec": {"type": "object", "properties": {"a": {"type": "string"}}},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "config": {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": True,
                "properties": {"b": {"type": "string"}},
            },
            "items": {"type": "array", "items": {"properties": {"c": {"type": "integer"}}}},
        },
    }
    strict = ks.adapt(json.loads(json.dumps(schema)), strict=True)
    assert strict["additionalProperties"] is False
    props = strict["properties"]
    assert props["spec"]["additionalProperties"] is False
    assert props["labels"]["additionalProperties"] == {"type": "string"}
    assert "additionalProperties" not in props["config"]
    assert props["items"]["items"]["additionalProperties"] is False
    loose = ks.adapt(json.loads(json.dumps(schema)), strict=False)
    assert "additionalProperties" not in loose["properties"]["spec"]


def test_int_or_string_and_nullable_become_json_schema() -> None:
    node = {
        "properties": {
            "port": {"x-kubernetes-int-or-string": True},
            "old": {"type": "string", "format": "int-or-string"},
            "deadline": {"type": "integer", "nullable": True},
        }
    }
    props = ks.adapt(node, strict=False)["properties"]
    for key in ("port", "old"):
        assert props[key]["anyOf"] == [{"type": "integer"}, {"type": "string"}]
        assert "type" not in props[key]
    assert props["deadline"]["type"] == ["integer", "null"]


def test_the_cached_kubernetes_schemas_cover_what_the_chart_renders() -> None:
    k8s = SCHEMAS / "kubernetes"
    for name in (
        "deployment-apps-v1-strict.json",
        "service-v1-strict.json",
        "serviceaccount-v1-strict.json",
        "clusterrole-rbac-v1-strict.json",
        "rolebinding-rbac-v1-strict.json",
        "customresourcedefinition-apiextensions-v1-strict.json",
        "configmap-v1-strict.json",
    ):
        assert (k8s / name).is_file(), name
    for name in ("servicemonitor-monitoring-v1-strict.json", "prometheusrule-monitoring-v1.json"):
        assert (SCHEMAS / "prometheus-operator" / name).is_file(), name


def test_crd_schemas_are_made_for_every_served_version(tmp_path: Path) -> None:
    crd = {
        "kind": "CustomResourceDefinition",
        "spec": {
            "group": "example.dev",
            "names": {"kind": "Widget"},
            "versions": [
                {"name": "v1", "served": True, "schema": {"openAPIV3Schema": {"type": "object"}}},
                {"name": "v0", "served": False, "schema": {"openAPIV3Schema": {}}},
            ],
        },
    }
    (tmp_path / "crd.json").write_text(json.dumps(crd))
    assert ks.crds(tmp_path / "out", [tmp_path / "crd.json"]) == 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "widget-example-v1-strict.json",
        "widget-example-v1.json",
    ]
