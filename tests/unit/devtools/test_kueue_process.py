"""Kueue on the local cluster: its webhooks called on loopback, its listeners on loopback."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from gaudi_devtools import kueue

pytestmark = pytest.mark.unit


def hook(name: str, path: str, groups: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "clientConfig": {
            "service": {"name": "webhook-service", "namespace": "system", "path": path}
        },
        "rules": [{"apiGroups": groups, "resources": ["x"], "operations": ["CREATE"]}],
        "failurePolicy": "Fail",
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
    }


MANIFESTS = [
    {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "mutating-webhook-configuration"},
        "webhooks": [
            hook("mworkload.kb.io", "/mutate-kueue-x-k8s-io-v1beta2-workload", ["kueue.x-k8s.io"]),
            hook("mpod.kb.io", "/mutate--v1-pod", [""]),
        ],
    },
    {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "validating-webhook-configuration"},
        "webhooks": [
            hook("vjob.kb.io", "/validate-batch-v1-job", ["batch"]),
            hook("vcq.kb.io", "/validate-kueue-x-k8s-io-v1beta2-clusterqueue", ["kueue.x-k8s.io"]),
        ],
    },
]


def test_webhooks_call_loopback_urls_for_kueues_own_api_only() -> None:
    out = kueue.webhook_configurations(MANIFESTS, 9443, b"CA")
    assert [d["metadata"]["name"] for d in out] == [
        "kueue-mutating-webhook-configuration",
        "kueue-validating-webhook-configuration",
    ]
    (m,), (v,) = out[0]["webhooks"], out[1]["webhooks"]
    assert m["clientConfig"] == {
        "url": "https://127.0.0.1:9443/mutate-kueue-x-k8s-io-v1beta2-workload",
        "caBundle": base64.b64encode(b"CA").decode(),
    }
    assert v["clientConfig"]["url"].endswith("/validate-kueue-x-k8s-io-v1beta2-clusterqueue")
    assert MANIFESTS[0]["webhooks"][0]["clientConfig"]["service"]  # the input is untouched


def test_configuration_listens_on_loopback_without_leader_election_or_internal_certs() -> None:
    cfg = kueue.configuration(9443, 8081, Path("/tmp/certs"))
    assert cfg["webhook"] == {"host": "127.0.0.1", "port": 9443, "certDir": "/tmp/certs"}
    assert cfg["health"]["healthProbeBindAddress"] == "127.0.0.1:8081"
    assert cfg["metrics"]["bindAddress"] == "0"
    assert cfg["featureGates"] == {"VisibilityOnDemand": False}  # no extra API server
    assert cfg["leaderElection"]["leaderElect"] is False
    assert cfg["internalCertManagement"]["enable"] is False
    assert cfg["integrations"]["externalFrameworks"] == [
        "GaudiTrainingJob.v1alpha1.gaudi.scalestarter.dev"
    ]
