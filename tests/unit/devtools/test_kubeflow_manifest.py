"""The Kubeflow peer of the reconcile benchmark gets the pod our operator gives a worker."""

from __future__ import annotations

import pytest

from gaudi_devtools.benchmarks import kubeflow
from gaudi_operator.api import GaudiTrainingJobSpec
from gaudi_operator.jobs.manifests import JobRef, worker_pod_manifest

pytestmark = pytest.mark.unit


def ours(name: str, workers: int, hpus: int) -> dict:
    spec = GaudiTrainingJobSpec.model_validate(kubeflow.bench_spec(workers, hpus))
    return worker_pod_manifest(spec, JobRef(name=name, namespace="ns", uid="u"), 0, 0)


def test_pytorchjob_is_worker_only_with_the_requested_replicas() -> None:
    job = kubeflow.pytorchjob_manifest("job-00001", "ns", 8, 1)
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "PyTorchJob"
    assert job["metadata"] == {"name": "job-00001", "namespace": "ns"}
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert list(replicas) == ["Worker"]
    assert replicas["Worker"]["replicas"] == 8


def test_worker_template_schedules_like_our_worker_pod() -> None:
    pod = ours("job-00001", 8, 2)
    tpl = kubeflow.pytorchjob_manifest("job-00001", "ns", 8, 2)["spec"]["pytorchReplicaSpecs"][
        "Worker"
    ]["template"]
    (c,) = tpl["spec"]["containers"]
    (o,) = pod["spec"]["containers"]
    assert c["name"] == "pytorch"  # PyTorchJob's required container name
    assert c["resources"] == o["resources"]
    assert c["resources"]["requests"]["habana.ai/gaudi"] == 2
    assert c["image"] == o["image"] and c["volumeMounts"] == o["volumeMounts"]
    for key in ("volumes", "tolerations", "terminationGracePeriodSeconds", "enableServiceLinks"):
        assert tpl["spec"][key] == pod["spec"][key]
    assert tpl["metadata"]["annotations"] == pod["metadata"]["annotations"]


def test_worker_template_leaves_names_and_torch_wiring_to_kubeflow() -> None:
    tpl = kubeflow.pytorchjob_manifest("job-00001", "ns", 2, 1)["spec"]["pytorchReplicaSpecs"][
        "Worker"
    ]["template"]
    for key in ("hostname", "subdomain", "restartPolicy"):
        assert key not in tpl["spec"]
    assert "name" not in tpl["metadata"] and "ownerReferences" not in tpl["metadata"]
    names = {e["name"] for e in tpl["spec"]["containers"][0]["env"]}
    assert not {n for n in names if n.startswith(("PET_", "MASTER_"))}
    assert "GAUDI3_WORKER_INDEX" not in names and "GAUDI3_JOB_NAME" in names
    assert "labels" not in tpl["metadata"]  # ours would claim the pod for our operator


@pytest.mark.parametrize(
    ("conditions", "running"),
    [
        ([{"type": "Created", "status": "True"}, {"type": "Running", "status": "True"}], True),
        ([{"type": "Running", "status": "False"}], False),
        ([], False),
    ],
)
def test_job_running_reads_the_running_condition(conditions: list, running: bool) -> None:
    assert kubeflow.job_running({"status": {"conditions": conditions}}) is running
