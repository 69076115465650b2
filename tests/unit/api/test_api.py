"""The pydantic models agree with the CRD, and refuse what the CRD's rules refuse."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from gaudi_operator import api
from gaudi_operator.api import GaudiTrainingJobSpec, GaudiTrainingJobStatus

pytestmark = pytest.mark.unit

CRD = Path(__file__).parents[3] / "crds" / "gauditrainingjobs.yaml"


def crd() -> dict[str, Any]:
    return yaml.safe_load(CRD.read_text())


def schema() -> dict[str, Any]:
    return crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_crd_names_match_api_constants() -> None:
    doc = crd()
    assert doc["metadata"]["name"] == f"{api.PLURAL}.{api.GROUP}"
    assert doc["spec"]["group"] == api.GROUP
    assert doc["spec"]["names"]["kind"] == api.KIND
    assert doc["spec"]["names"]["shortNames"] == [api.SHORT_NAME]
    version = doc["spec"]["versions"][0]
    assert version["name"] == api.VERSION
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.workers.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }


def _defaults(props: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, sub in props.items():
        if "default" in sub and sub.get("type") != "object":
            out[prefix + name] = sub["default"]
        if "properties" in sub:
            out.update(_defaults(sub["properties"], f"{prefix}{name}."))
    return out


def _get(model: Any, dotted: str) -> Any:
    value = model.to_dict()
    for part in dotted.split("."):
        value = value[part]
    return value


def test_model_defaults_match_crd_defaults() -> None:
    defaults = _defaults(schema()["properties"]["spec"]["properties"])
    assert len(defaults) > 25
    spec = GaudiTrainingJobSpec.model_validate({"image": "img"})
    for dotted, value in defaults.items():
        assert _get(spec, dotted) == value, dotted


def test_every_crd_field_has_a_description() -> None:
    missing: list[str] = []

    def walk(node: dict[str, Any], path: str) -> None:
        for name, sub in (node.get("properties") or {}).items():
            if name not in ("apiVersion", "kind", "metadata") and not sub.get("description"):
                missing.append(f"{path}.{name}")
            walk(sub, f"{path}.{name}")
        if "items" in node:
            walk(node["items"], path + "[]")

    walk(schema(), "")
    assert missing == []


def test_every_spec_field_of_the_crd_is_modelled() -> None:
    def walk(props: dict[str, Any], model: type[BaseModel], path: str) -> None:
        aliases = {f.alias or n: f for n, f in model.model_fields.items()}
        for name, sub in props.items():
            assert name in aliases, f"{path}.{name} missing from {model.__name__}"
            ann = aliases[name].annotation
            inner = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type)]
            sub_model = next((a for a in inner if issubclass(a, BaseModel)), None)
            if "properties" in sub and sub_model is not None:
                walk(sub["properties"], sub_model, f"{path}.{name}")

    walk(schema()["properties"]["spec"]["properties"], GaudiTrainingJobSpec, "spec")
    walk(schema()["properties"]["status"]["properties"], GaudiTrainingJobStatus, "status")


def test_snake_case_attributes_and_camel_case_wire_names() -> None:
    spec = GaudiTrainingJobSpec.model_validate(
        {"image": "i", "hpusPerWorker": 4, "autoscaling": {"prometheusURL": "http://p:9090"}}
    )
    assert spec.hpus_per_worker == 4
    assert spec.autoscaling.prometheus_url == "http://p:9090"
    assert spec.to_dict()["autoscaling"]["prometheusURL"] == "http://p:9090"
    by_name = GaudiTrainingJobSpec(image="i", hpus_per_worker=2)
    assert by_name.to_dict()["hpusPerWorker"] == 2
    status = GaudiTrainingJobStatus.model_validate(
        {"lastScale": {"from": 2, "to": 4, "reason": "x"}}
    )
    assert status.last_scale is not None and status.last_scale.from_ == 2
    assert status.to_dict()["lastScale"]["from"] == 2


def test_elastic_bounds_default_to_replicas() -> None:
    w = GaudiTrainingJobSpec.model_validate({"image": "i", "workers": {"replicas": 3}}).workers
    assert (w.min, w.replicas, w.max) == (3, 3, 3)
    w = api.Workers(replicas=4, min_replicas=2)
    assert (w.min, w.max) == (2, 4)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"hpusPerWorker": 9}, "spec.hpusPerWorker"),
        ({"hpusPerWorker": 3}, "spec.hpusPerWorker must be 1, 2, 4 or 8"),
        ({"hpusPerWorker": 6}, "spec.hpusPerWorker must be 1, 2, 4 or 8"),
        (
            {
                "template": {
                    "spec": {
                        "containers": [
                            {
                                "name": "w",
                                "env": [
                                    {"name": "A", "value": "1"},
                                    {"name": "HABANA_VISIBLE_DEVICES", "value": "0"},
                                ],
                            }
                        ]
                    }
                }
            },
            "spec.template.spec.containers[0].env[1]: the Habana device plugin sets",
        ),
        (
            {
                "template": {
                    "spec": {
                        "initContainers": [
                            {"name": "i", "env": [{"name": "HL_VISIBLE_DEVICES", "value": "x"}]}
                        ]
                    }
                }
            },
            "spec.template.spec.initContainers[0].env[0]",
        ),
        ({"workers": {"replicas": 4, "minReplicas": 5}}, "spec.workers"),
        ({"workers": {"replicas": 4, "maxReplicas": 3}}, "spec.workers"),
        ({"batch": {"globalBatchSize": 100, "microBatchSize": 8}}, "spec.batch.globalBatchSize"),
        ({"failurePolicy": {"restartStrategy": "Bogus"}}, "spec.failurePolicy.restartStrategy"),
        ({"runPolicy": {"activeDeadlineSeconds": -1}}, "spec.runPolicy.activeDeadlineSeconds"),
        (
            {"failurePolicy": {"rules": [{"exitCodes": [3], "action": "RestartIgnoreLimit"}]}},
            "spec.failurePolicy.rules[0].action",
        ),
        (
            {"failurePolicy": {"rules": [{"action": "Fail"}]}},
            "spec.failurePolicy.rules[0]",
        ),
        ({"autoscaling": {"enabled": True}}, "spec.autoscaling.metric.query"),
        ({"scheduling": {"gang": True}}, "spec.scheduling.schedulerName"),
    ],
)
def test_invalid_spec_names_the_field(spec: dict[str, Any], field: str) -> None:
    from gaudi_operator.jobs.observation import describe_spec_error

    with pytest.raises(ValidationError) as info:
        GaudiTrainingJobSpec.model_validate({"image": "img", **spec})
    assert field in describe_spec_error(info.value)


def test_rfc3339_round_trip() -> None:
    from datetime import UTC, datetime

    t = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert api.to_rfc3339(t) == "2025-01-02T03:04:05Z"
    assert api.parse_rfc3339("2025-01-02T03:04:05Z") == t
    assert api.parse_rfc3339("garbage") is None


def test_crd_schema_uses_only_openapi_keywords() -> None:
    # A YAML slip (a comma in a flow mapping) silently becomes an unknown keyword.
    allowed = {
        "type", "description", "default", "enum", "minimum", "maximum", "items", "properties",
        "required", "x-kubernetes-validations", "format", "nullable", "minLength", "maxLength",
        "maxItems", "minItems", "pattern", "additionalProperties", "anyOf", "exclusiveMinimum",
        "x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields",
        "x-kubernetes-list-type", "x-kubernetes-list-map-keys", "x-kubernetes-map-type",
    }  # fmt: skip
    bad: list[str] = []

    def walk(node: dict[str, Any], path: str) -> None:
        bad.extend(f"{path}: {k}" for k in node if k not in allowed)
        for name, sub in (node.get("properties") or {}).items():
            walk(sub, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], path + "[]")

    walk(schema(), "")
    assert bad == []
