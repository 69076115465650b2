"""The GaudiTrainingJob CRD on a real API server: explain, scale subresource shape,
manifests the API server refuses with a message that names the field, and spec.template
typed as the pinned Kubernetes' PodTemplateSpec (a typo refused, valid overlays reach the
pods)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cluster.gtj import PLURAL, job_body, wait_running_workers

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
    ("spares-without-in-place", {"workers": {"spares": 1}}, "spec.workers.spares"),
    (
        "too-many-spares",
        {"workers": {"spares": 65}, "failurePolicy": {"restartInPlace": True}},
        "spec.workers.spares",
    ),
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


# --- spec.template: the PodTemplateSpec schema of the pinned Kubernetes --------------------
TYPO = "spec.template.spec.nodeselector"


def _typo_job() -> str:
    return json.dumps(job_body("typo", template={"spec": {"nodeselector": {"pool": "a"}}}))


def test_a_misspelled_template_field_is_refused_at_apply_naming_its_path(
    crd: Any, kubectl: Any, namespace: str
) -> None:
    def apply(*flags: str) -> Any:
        return kubectl("apply", *flags, "-n", namespace, "-f", "-", input=_typo_job(), check=False)

    # kubectl's default, --validate=strict, asks the API server for strict field validation.
    out = apply()
    assert out.returncode != 0 and f'unknown field "{TYPO}"' in out.stderr, out.stderr
    # Server-side apply checks every field against the schema, whatever --validate says.
    out = apply("--server-side", "--validate=false")
    assert out.returncode != 0, out.stdout
    assert f".{TYPO}: field not declared in schema" in out.stderr, out.stderr
    assert kubectl("get", "gtj", "-n", namespace, "-o", "name").stdout.strip() == ""
    # Asked only to warn, the API server warns and drops the field: never kept and ignored.
    out = apply("--validate=warn")
    assert out.returncode == 0 and f'Warning: unknown field "{TYPO}"' in out.stderr, out.stderr
    stored = kubectl("get", "gtj", "typo", "-n", namespace, "-o", "jsonpath={.spec.template}")
    assert json.loads(stored.stdout) == {"spec": {}}


def test_a_template_container_needs_a_name_as_in_a_pod(
    crd: Any, kubectl: Any, namespace: str
) -> None:
    body = job_body("unnamed", template={"spec": {"containers": [{"env": []}]}})
    out = kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(body), check=False)
    assert out.returncode != 0, out.stdout
    assert "spec.template.spec.containers[0].name: Required value" in out.stderr, out.stderr


def test_kubectl_explain_describes_the_template_like_a_pod(crd: Any, kubectl: Any) -> None:
    out = kubectl("explain", "gtj.spec.template.spec.containers").stdout
    assert "List of containers belonging to the pod." in out
    for field in ("env\t<[]Object>", "image\t<string>", "volumeMounts\t<[]Object>"):
        assert field in out, out
    assert "name\t<string> -required-" in out
    out = kubectl("explain", "gtj.spec.template.spec.tolerations.effect").stdout
    assert "Effect indicates the taint effect to match." in out


def test_a_valid_template_applies_and_reaches_the_worker_pods(
    operator: Any, core: Any, kubectl: Any, namespace: str, hpus_free: Any
) -> None:
    hpus_free()
    template = {
        "metadata": {"labels": {"team": "llm"}, "annotations": {"example.com/owner": "ml"}},
        "spec": {
            "nodeSelector": {"habana.ai/device.type": "gaudi3"},
            "tolerations": [
                {"key": "example.com/dedicated", "operator": "Equal", "value": "training"}
            ],
            "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}}],
            "containers": [
                {
                    "name": "worker",
                    "env": [{"name": "EXTRA_SETTING", "value": "on"}],
                    "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
                    "resources": {"requests": {"cpu": 1}},  # a quantity as a number
                }
            ],
        },
    }
    body = job_body("templated", hpusPerWorker=1, template=template)
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body))
    (pod,) = wait_running_workers(core, namespace, "templated", 1)
    assert pod.metadata.labels["team"] == "llm"
    assert pod.metadata.annotations["example.com/owner"] == "ml"
    assert pod.spec.node_selector["habana.ai/device.type"] == "gaudi3"
    assert "example.com/dedicated" in [t.key for t in pod.spec.tolerations]
    assert "scratch" in [v.name for v in pod.spec.volumes]
    (worker,) = pod.spec.containers
    assert {"name": "EXTRA_SETTING", "value": "on"} in [
        {"name": e.name, "value": e.value} for e in worker.env
    ]
    assert "/scratch" in [m.mount_path for m in worker.volume_mounts]
    assert worker.resources.requests["cpu"] == "1"
