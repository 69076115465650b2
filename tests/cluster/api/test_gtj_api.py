"""The GaudiTrainingJob CRD on a real API server: explain, scale subresource shape, and
manifests the API server refuses with a message that names the field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cluster.gtj import PLURAL, job_body

pytestmark = pytest.mark.cluster


def test_crd_installs_and_kubectl_explain_is_useful(crd: Any, kubectl: Any) -> None:
    out = kubectl("explain", "gtj.spec.failurePolicy").stdout
    assert "restartStrategy" in out and "RecreateAll" in out
    assert "nodeFailureGraceSeconds" in out
    out = kubectl("explain", "gtj.spec.workers.replicas").stdout
    assert "/scale" in out
    out = kubectl("explain", "gauditrainingjobs.status.lastFailure").stdout
    assert "exitCode" in out
    names = kubectl("api-resources", "--api-group=gaudi.scalestarter.dev", "-o", "wide").stdout
    assert "gtj" in names and PLURAL in names


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("hpus-too-many", {"hpusPerWorker": 9}, "spec.hpusPerWorker"),
    ("hpus-zero", {"hpusPerWorker": 0}, "spec.hpusPerWorker"),
    (
        "min-above-max",
        {"workers": {"replicas": 4, "minReplicas": 5, "maxReplicas": 3}},
        "spec.workers.minReplicas",
    ),
    (
        "replicas-above-max",
        {"workers": {"replicas": 9, "minReplicas": 2, "maxReplicas": 8}},
        "spec.workers.replicas",
    ),
    (
        "replicas-below-min",
        {"workers": {"replicas": 1, "minReplicas": 2, "maxReplicas": 8}},
        "spec.workers.replicas",
    ),
    (
        "unknown-restart-strategy",
        {"failurePolicy": {"restartStrategy": "RestartEverything"}},
        "spec.failurePolicy.restartStrategy",
    ),
    (
        "negative-deadline",
        {"runPolicy": {"activeDeadlineSeconds": -5}},
        "spec.runPolicy.activeDeadlineSeconds",
    ),
    (
        "batch-not-divisible",
        {"batch": {"globalBatchSize": 1000, "microBatchSize": 8}},
        "spec.batch.globalBatchSize",
    ),
    (
        "batch-not-divisible-by-world",
        {
            "hpusPerWorker": 8,
            "workers": {"replicas": 3},
            "batch": {"globalBatchSize": 1024, "microBatchSize": 8},
        },
        "spec.batch.globalBatchSize",
    ),
    (
        "ignore-limit-for-exit-code",
        {"failurePolicy": {"rules": [{"exitCodes": [3], "action": "RestartIgnoreLimit"}]}},
        "spec.failurePolicy.rules[0].action",
    ),
    (
        "rule-without-match",
        {"failurePolicy": {"rules": [{"action": "Fail"}]}},
        "spec.failurePolicy.rules[0]",
    ),
    (
        "exit-code-zero",
        {"failurePolicy": {"rules": [{"exitCodes": [0], "action": "Fail"}]}},
        "spec.failurePolicy.rules[0].exitCodes[0]",
    ),
    (
        "unknown-failure-reason",
        {"failurePolicy": {"rules": [{"reasons": ["CosmicRay"], "action": "Restart"}]}},
        "spec.failurePolicy.rules[0].reasons[0]",
    ),
    (
        "unknown-action",
        {"failurePolicy": {"rules": [{"exitCodes": [1], "action": "Pray"}]}},
        "spec.failurePolicy.rules[0].action",
    ),
    (
        "autoscaling-without-query",
        {"autoscaling": {"enabled": True}},
        "spec.autoscaling.metric.query",
    ),
    ("tolerance-above-one", {"autoscaling": {"tolerance": 2}}, "spec.autoscaling.tolerance"),
    ("gang-without-scheduler", {"scheduling": {"gang": True}}, "spec.scheduling.schedulerName"),
    (
        "unknown-clean-pod-policy",
        {"runPolicy": {"cleanPodPolicy": "Sometimes"}},
        "spec.runPolicy.cleanPodPolicy",
    ),
    (
        "negative-ttl",
        {"runPolicy": {"ttlSecondsAfterFinished": -1}},
        "spec.runPolicy.ttlSecondsAfterFinished",
    ),
    ("empty-image", {"image": ""}, "spec.image"),
]


@pytest.mark.parametrize(("name", "spec", "field"), INVALID, ids=[i[0] for i in INVALID])
def test_invalid_manifest_is_refused_naming_the_field(
    crd: Any, kubectl: Any, namespace: str, name: str, spec: dict[str, Any], field: str
) -> None:
    body = job_body(name, **spec)
    out = kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(body), check=False)
    assert out.returncode != 0, f"{name} was accepted"
    assert "is invalid" in out.stderr, out.stderr
    assert field in out.stderr, out.stderr
    assert kubectl("get", "gtj", "-n", namespace, "-o", "name").stdout.strip() == ""


def test_missing_image_and_bad_names_are_refused(crd: Any, kubectl: Any, namespace: str) -> None:
    body = job_body("no-image")
    del body["spec"]["image"]
    out = kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(body), check=False)
    assert out.returncode != 0 and "spec.image" in out.stderr
    long_name = "a" * 50
    out = kubectl(
        "create", "-n", namespace, "-f", "-", input=json.dumps(job_body(long_name)), check=False
    )
    assert out.returncode != 0 and "metadata.name" in out.stderr


def test_hpus_per_worker_is_immutable(crd: Any, kubectl: Any, namespace: str) -> None:
    kubectl(
        "create", "-n", namespace, "-f", "-", input=json.dumps(job_body("fixed", hpusPerWorker=4))
    )
    out = kubectl(
        "patch",
        "gtj",
        "fixed",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"hpusPerWorker":2}}',
        check=False,
    )
    assert out.returncode != 0 and "spec.hpusPerWorker" in out.stderr and "immutable" in out.stderr


def test_defaults_are_filled_in_by_the_api_server(crd: Any, kubectl: Any, namespace: str) -> None:
    kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(job_body("defaults")))
    job = json.loads(kubectl("get", "gtj", "defaults", "-n", namespace, "-o", "json").stdout)
    spec = job["spec"]
    assert spec["hpusPerWorker"] == 8
    assert spec["workers"]["replicas"] == 1
    assert spec["failurePolicy"]["restartStrategy"] == "RecreateAll"
    assert spec["failurePolicy"]["nodeFailureGraceSeconds"] == 30
    assert spec["autoscaling"]["scaleDown"] == {"stabilizationSeconds": 300, "maxStep": 1}
    assert spec["runPolicy"]["cleanPodPolicy"] == "Running"
    assert spec["checkpoint"]["path"] == "/checkpoints"
