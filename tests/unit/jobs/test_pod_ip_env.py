"""Workers learn their own IP, so every listener in them can bind it (host networking)."""

from __future__ import annotations

import pytest

from gaudi_operator.api import GaudiTrainingJobSpec
from gaudi_operator.jobs import manifests

pytestmark = pytest.mark.unit

JOB = manifests.JobRef(name="llama", namespace="team-a", uid="1234-abcd")


def test_worker_env_carries_the_pod_ip_from_the_downward_api() -> None:
    spec = GaudiTrainingJobSpec.model_validate({"image": "reg/gaudi-train:1"})
    pod = manifests.worker_pod_manifest(spec, JOB, index=1, generation=0)
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env["GAUDI3_POD_IP"] == {
        "name": "GAUDI3_POD_IP",
        "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
    }


def test_a_template_cannot_replace_the_pod_ip_variable() -> None:
    spec = GaudiTrainingJobSpec.model_validate(
        {
            "image": "reg/gaudi-train:1",
            "template": {"spec": {"containers": [{"name": "worker", "env": [
                {"name": "GAUDI3_POD_IP", "value": "0.0.0.0"}
            ]}]}},
        }
    )  # fmt: skip
    pod = manifests.worker_pod_manifest(spec, JOB, index=0, generation=0)
    values = [e for e in pod["spec"]["containers"][0]["env"] if e["name"] == "GAUDI3_POD_IP"]
    assert values == [
        {"name": "GAUDI3_POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
    ]
