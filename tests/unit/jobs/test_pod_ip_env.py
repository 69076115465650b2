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


def test_a_one_worker_job_reaches_itself_at_its_own_ip_without_a_service() -> None:
    one = GaudiTrainingJobSpec.model_validate({"image": "reg/gaudi-train:1"})
    assert not manifests.needs_service(one)
    env = manifests.worker_pod_manifest(one, JOB, index=0, generation=0)["spec"]["containers"][0][
        "env"
    ]
    names = [e["name"] for e in env]
    values = {e["name"]: e.get("value") for e in env}
    assert values["PET_RDZV_ENDPOINT"] == "$(GAUDI3_POD_IP):29400"
    assert values["MASTER_ADDR"] == "$(GAUDI3_POD_IP)"
    # The kubelet expands $(VAR) only from variables defined before it.
    assert names.index("GAUDI3_POD_IP") < names.index("PET_RDZV_ENDPOINT")
    assert names.index("GAUDI3_POD_IP") < names.index("MASTER_ADDR")


def test_a_job_that_may_grow_past_one_worker_keeps_the_service_and_dns_names() -> None:
    elastic = GaudiTrainingJobSpec.model_validate(
        {"image": "reg/gaudi-train:1", "workers": {"replicas": 1, "maxReplicas": 2}}
    )
    assert manifests.needs_service(elastic)
    env = manifests.worker_pod_manifest(elastic, JOB, index=0, generation=0)["spec"]["containers"][
        0
    ]["env"]
    values = {e["name"]: e.get("value") for e in env}
    assert values["PET_RDZV_ENDPOINT"] == "llama-worker-0.llama.team-a.svc:29400"
    assert values["MASTER_ADDR"] == "llama-worker-0.llama.team-a.svc"
