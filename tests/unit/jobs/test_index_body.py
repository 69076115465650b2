"""The job index keeps what the passes read, without managedFields, packed as JSON, and
never changes the object kopf handed over."""

from __future__ import annotations

import copy

import kopf

from gaudi_operator.jobs.wiring import index_body
from gaudi_operator.runtime.packed import unpack


def test_the_index_keeps_metadata_spec_and_status_but_not_managed_fields() -> None:
    raw = {
        "apiVersion": "gaudi.scalestarter.dev/v1alpha1",
        "kind": "GaudiTrainingJob",
        "metadata": {
            "name": "j",
            "namespace": "ns",
            "uid": "u1",
            "resourceVersion": "7",
            "labels": {"a": "b"},
            "managedFields": [{"manager": "kubectl"}],
        },
        "spec": {"image": "x", "workers": {"replicas": 2}},
        "status": {"phase": "Running"},
    }
    before = copy.deepcopy(raw)
    job = unpack(index_body(kopf.Body(raw)))
    assert job is not None
    assert "managedFields" not in job["metadata"]
    assert job["metadata"]["resourceVersion"] == "7"
    assert job["metadata"]["labels"] == {"a": "b"}
    assert job["spec"] == before["spec"]
    assert job["status"] == before["status"]
    assert raw == before  # kopf's copy is left as it was
