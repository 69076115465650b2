"""Property-based fuzz of job specs: specs generated from the CRD's own schema, kept when
the real API server admits them (server-side dry run: schema, defaults and CEL rules), then
run through a whole reconcile decision. The operator never crashes on a spec the CRD
admits, and every spec it cannot run gets an InvalidSpec condition naming the field.

Seeded (GAUDI3_FUZZ_SEED, printed), so a failure reproduces."""

from __future__ import annotations

import os
import random
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from cluster.gtj import CRD, GROUP, PLURAL, VERSION
from gaudi_operator.jobs.observation import JobView, WorkerPod
from gaudi_operator.jobs.plan import plan

pytestmark = pytest.mark.cluster

SEED = int(os.environ.get("GAUDI3_FUZZ_SEED") or random.SystemRandom().randrange(2**32))
EXAMPLES = int(os.environ.get("GAUDI3_FUZZ_EXAMPLES", "100"))
# Left out of generation: the pod template (Kubernetes' own PodTemplateSpec, validated by
# the API server like any pod) and free-form resource maps.
SKIP = {"template", "resources"}


def json_schema(node: Any) -> Any:
    """The CRD's OpenAPI schema as plain JSON Schema (Kubernetes' x- keys dropped)."""
    if isinstance(node, dict):
        out = {k: json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
        if node.get("x-kubernetes-int-or-string"):
            out["type"] = ["integer", "string"]
        return out
    if isinstance(node, list):
        return [json_schema(v) for v in node]
    return node


def spec_schema() -> dict[str, Any]:
    crd = next(
        d
        for d in yaml.safe_load_all(CRD.read_text())
        if d and d.get("kind") == "CustomResourceDefinition"
    )
    version = next(v for v in crd["spec"]["versions"] if v["name"] == VERSION)
    spec = json_schema(version["schema"]["openAPIV3Schema"]["properties"]["spec"])
    for name in SKIP:
        spec["properties"].pop(name, None)
    spec["additionalProperties"] = False
    return spec


SPECS = from_schema(spec_schema())


def admitted(custom: Any, namespace: str, spec: dict[str, Any]) -> dict[str, Any] | None:
    """The object as the API server would store it (defaults applied), or None if refused."""
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "GaudiTrainingJob",
            "metadata": {"name": "fuzz", "namespace": namespace}, "spec": spec}  # fmt: skip
    try:
        return custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, body, dry_run="All"
        )
    except Exception as err:
        if getattr(err, "status", None) in (400, 422):
            return None
        raise


def test_every_admitted_spec_is_planned_or_named_as_invalid(
    custom: Any, namespace: str, crd: Any
) -> None:
    print(f"spec fuzz: GAUDI3_FUZZ_SEED={SEED} examples={EXAMPLES}")
    seen = {"admitted": 0, "refused": 0, "invalid": 0}
    now = datetime(2026, 1, 1, tzinfo=UTC)

    @seed(SEED)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(spec=SPECS, workers=st.integers(min_value=0, max_value=3))
    def check(spec: dict[str, Any], workers: int) -> None:
        obj = admitted(custom, namespace, spec)
        if obj is None:
            seen["refused"] += 1
            return
        seen["admitted"] += 1
        obj["metadata"].update(uid="u-1", generation=1)
        pods = [
            WorkerPod(
                f"fuzz-worker-{i}",
                f"p{i}",
                owner_uid="u-1",
                index=i,
                generation=0,
                phase="Running",
                node="n0",
            )
            for i in range(workers)
        ]
        p = plan(JobView.from_body(obj), pods, now)  # must not raise
        invalid = next((c for c in p.status.conditions if c.type == "InvalidSpec"), None)
        if invalid is not None and invalid.status == "True":
            seen["invalid"] += 1
            assert "spec." in invalid.message, invalid.message
            assert p.create == [] and p.delete == []  # nothing touched for a bad spec
        else:
            assert p.spec is not None

    check()
    print(f"spec fuzz: {seen}")
    assert seen["admitted"] > EXAMPLES // 10, f"too few admitted specs to mean much: {seen}"
