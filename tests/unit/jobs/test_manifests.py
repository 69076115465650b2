"""Worker pod, Service and PodGroup manifests."""

from __future__ import annotations

from typing import Any

import pytest

from gaudi_operator import api
from gaudi_operator.api import GaudiTrainingJobSpec
from gaudi_operator.jobs import manifests

pytestmark = pytest.mark.unit

JOB = manifests.JobRef(name="llama", namespace="team-a", uid="1234-abcd")


def spec(**extra: Any) -> GaudiTrainingJobSpec:
    return GaudiTrainingJobSpec.model_validate({"image": "reg/gaudi-train:1", **extra})


def env_of(pod: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}


def test_worker_pod_requests_hpus_and_hugepages_and_is_owned_by_the_job() -> None:
    pod = manifests.worker_pod_manifest(spec(hpusPerWorker=4), JOB, index=2, generation=1)
    res = pod["spec"]["containers"][0]["resources"]
    assert res["requests"][api.GAUDI_RESOURCE] == 4 == res["limits"][api.GAUDI_RESOURCE]
    # Intel's sizing: about 29000Mi for 8 cards (docs/gaudi.md), 3624Mi a card.
    assert res["requests"]["hugepages-2Mi"] == res["limits"]["hugepages-2Mi"] == "14496Mi"
    owner = pod["metadata"]["ownerReferences"][0]
    assert owner == {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "name": "llama",
        "uid": "1234-abcd",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    assert pod["metadata"]["name"] == "llama-worker-2"
    assert pod["metadata"]["labels"] == {
        api.LABEL_JOB_NAME: "llama",
        api.LABEL_WORKER_INDEX: "2",
        api.LABEL_GENERATION: "1",
        api.LABEL_MANAGED_BY: api.MANAGED_BY,
    }
    assert pod["spec"]["hostname"] == "llama-worker-2"
    assert pod["spec"]["subdomain"] == "llama"
    assert pod["spec"]["restartPolicy"] == "Never"


def test_worker_pod_tolerates_the_gaudi_taint_and_is_scraped() -> None:
    pod = manifests.worker_pod_manifest(spec(), JOB, 0, 0)
    assert {"key": "habana.ai/gaudi", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"][
        "tolerations"
    ]
    ann = pod["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert ann["prometheus.io/port"] == "9400"


def test_worker_pod_mounts_the_checkpoint_claim_and_the_hosts_shm_with_host_ipc() -> None:
    pod = manifests.worker_pod_manifest(
        spec(checkpoint={"volumeClaimName": "ckpt", "path": "/ckpt"}), JOB, 0, 0
    )
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["checkpoints"]["persistentVolumeClaim"] == {"claimName": "ckpt"}
    mounts = {m["name"]: m["mountPath"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
    # hostIPC: the runtime mounts the node's /dev/shm; a volume there would hide it.
    assert pod["spec"]["hostIPC"] is True
    assert "dshm" not in volumes
    assert mounts == {"checkpoints": "/ckpt"}


def test_without_host_ipc_the_worker_gets_a_memory_shm_of_8gi_per_hpu() -> None:
    pod = manifests.worker_pod_manifest(spec(hpusPerWorker=2, gaudi={"hostIPC": False}), JOB, 0, 0)
    assert "hostIPC" not in pod["spec"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    mounts = {m["name"]: m["mountPath"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert mounts["dshm"] == "/dev/shm"


def test_worker_env_is_the_torchrun_elastic_contract() -> None:
    s = spec(
        hpusPerWorker=8,
        workers={"replicas": 4, "minReplicas": 2, "maxReplicas": 8},
        batch={"globalBatchSize": 1024, "microBatchSize": 8},
        checkpoint={"intervalSteps": 100},
    )
    env = env_of(manifests.worker_pod_manifest(s, JOB, 3, 5))
    master = "llama-worker-0.llama.team-a.svc"
    assert env["PET_NNODES"] == "2:8"
    assert env["PET_NPROC_PER_NODE"] == "8"
    assert env["PET_RDZV_BACKEND"] == "c10d"
    assert env["PET_RDZV_ENDPOINT"] == f"{master}:29400"
    assert env["PET_RDZV_ID"] == "1234-abcd-5"
    assert env["PET_MAX_RESTARTS"] == "3"
    assert env["MASTER_ADDR"] == master and env["MASTER_PORT"] == "29500"
    assert env["GAUDI3_JOB_NAME"] == "llama" and env["GAUDI3_NAMESPACE"] == "team-a"
    assert env["GAUDI3_WORKER_INDEX"] == "3" and env["GAUDI3_GENERATION"] == "5"
    assert env["GAUDI3_WORLD_PODS"] == "4"  # replicas: the world this pod is created for
    assert env["GAUDI3_CHECKPOINT_DIR"] == "/checkpoints"
    assert env["GAUDI3_CHECKPOINT_INTERVAL"] == "100"
    assert env["GAUDI3_GLOBAL_BATCH_SIZE"] == "1024"
    assert env["GAUDI3_MICRO_BATCH_SIZE"] == "8"
    assert env["GAUDI3_METRICS_PORT"] == "9400"


def test_headless_service_publishes_not_ready_workers() -> None:
    svc = manifests.service_manifest(JOB)
    assert svc["metadata"]["name"] == "llama"
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {api.LABEL_JOB_NAME: "llama"}


def test_template_overlay_merges_in_the_documented_way() -> None:
    template = {
        "metadata": {"labels": {"team": "a", api.LABEL_JOB_NAME: "evil"}},
        "spec": {
            "nodeSelector": {"zone": "z1"},
            "tolerations": [{"key": "spot", "operator": "Exists"}],
            "serviceAccountName": "trainer",
            "hostname": "nope",
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
            "containers": [
                {
                    "name": "worker",
                    "image": "ignored",
                    "env": [
                        {"name": "HF_HOME", "value": "/data"},
                        {"name": "PET_NNODES", "value": "9"},
                    ],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                    "resources": {"limits": {"memory": "64Gi", api.GAUDI_RESOURCE: 1}},
                    "imagePullPolicy": "Always",
                },
                {"name": "sidecar", "image": "busybox"},
            ],
        },
    }
    pod = manifests.worker_pod_manifest(spec(template=template, hpusPerWorker=2), JOB, 0, 0)
    assert pod["metadata"]["labels"]["team"] == "a"
    assert pod["metadata"]["labels"][api.LABEL_JOB_NAME] == "llama"  # operator wins
    s = pod["spec"]
    assert s["nodeSelector"] == {"zone": "z1"}
    assert len(s["tolerations"]) == 2
    assert s["serviceAccountName"] == "trainer"
    assert s["hostname"] == "llama-worker-0"
    assert [c["name"] for c in s["containers"]] == ["worker", "sidecar"]
    worker = s["containers"][0]
    assert worker["image"] == "reg/gaudi-train:1"
    assert worker["imagePullPolicy"] == "Always"
    env = env_of(pod)
    assert env["HF_HOME"] == "/data" and env["PET_NNODES"] == "1:1"
    assert {"name": "data", "mountPath": "/data"} in worker["volumeMounts"]
    assert worker["resources"]["limits"]["memory"] == "64Gi"
    assert worker["resources"]["limits"][api.GAUDI_RESOURCE] == 2  # pinned to hpusPerWorker
    assert {v["name"] for v in s["volumes"]} == {"checkpoints", "data"}


def test_user_volume_replaces_an_operator_volume_of_the_same_name() -> None:
    template = {
        "spec": {
            "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}}]
        }
    }
    for gaudi in ({"hostIPC": False}, {}):  # a template's own dshm is mounted either way
        pod = manifests.worker_pod_manifest(spec(template=template, gaudi=gaudi), JOB, 0, 0)
        shm = [v for v in pod["spec"]["volumes"] if v["name"] == "dshm"]
        assert shm == [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}}]
        mounts = pod["spec"]["containers"][0]["volumeMounts"]
        assert [m["mountPath"] for m in mounts if m["name"] == "dshm"] == ["/dev/shm"]


def test_spec_resources_override_the_defaults() -> None:
    pod = manifests.worker_pod_manifest(
        spec(resources={"requests": {"cpu": "2", "hugepages-2Mi": "2Gi"}}), JOB, 0, 0
    )
    res = pod["spec"]["containers"][0]["resources"]
    assert res["requests"]["cpu"] == "2"
    assert res["requests"]["hugepages-2Mi"] == res["limits"]["hugepages-2Mi"]


def test_excluded_nodes_are_added_to_every_affinity_term() -> None:
    template = {
        "spec": {
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {"matchExpressions": [{"key": "a", "operator": "Exists"}]},
                            {"matchExpressions": [{"key": "b", "operator": "Exists"}]},
                        ]
                    }
                }
            }
        }
    }
    pod = manifests.worker_pod_manifest(spec(template=template), JOB, 0, 0, ["n2", "n1"])
    terms = pod["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    for term in terms:
        assert {
            "key": "kubernetes.io/hostname",
            "operator": "NotIn",
            "values": ["n1", "n2"],
        } in term["matchExpressions"]


def test_pod_group_only_with_gang_and_scheduler() -> None:
    assert manifests.pod_group_manifest(spec(), JOB) is None
    s = spec(
        scheduling={"gang": True, "schedulerName": "scheduler-plugins-scheduler"},
        workers={"replicas": 4, "minReplicas": 2, "maxReplicas": 4},
    )
    group = manifests.pod_group_manifest(s, JOB)
    assert group is not None
    assert group["apiVersion"] == "scheduling.x-k8s.io/v1alpha1"
    assert group["spec"]["minMember"] == 2
    pod = manifests.worker_pod_manifest(s, JOB, 0, 0)
    assert pod["metadata"]["labels"][manifests.POD_GROUP_LABEL] == "llama"
    assert pod["spec"]["schedulerName"] == "scheduler-plugins-scheduler"
    volcano = spec(scheduling={"gang": True, "schedulerName": "volcano", "queue": "q"})
    group = manifests.pod_group_manifest(volcano, JOB)
    assert group is not None and group["apiVersion"] == "scheduling.volcano.sh/v1beta1"
    assert group["spec"]["queue"] == "q"
    pod = manifests.worker_pod_manifest(volcano, JOB, 0, 0)
    assert pod["metadata"]["annotations"][manifests.VOLCANO_GROUP_ANNOTATION] == "llama"
