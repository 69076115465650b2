"""The scale-out readiness gate on a real scheduler (docs/gaudi.md): with no node labelled
scale-out ready by Intel's network operator, a multi-worker job waits and says exactly
why in its Scheduled condition; once a node is labelled, its workers are placed there.

The local cluster labels every Gaudi node, as a cluster set up with Intel's network
operator is; this test takes the label away (and gives it back afterwards)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from cluster.gtj import create_job, get_job, job_body, wait_running_workers
from conftest import wait_for
from gaudi_operator import api

pytestmark = pytest.mark.cluster

KEY, VALUE = api.SCALE_OUT_READY_LABEL.split("=")


def condition(job: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(
        (c for c in (job.get("status") or {}).get("conditions") or [] if c["type"] == type_), {}
    )


def label(core: Any, node: str, value: str | None) -> None:
    core.patch_node(node, {"metadata": {"labels": {KEY: value}}})


@pytest.fixture
def no_ready_node(core: Any) -> Iterator[list[str]]:
    """Every node that carried the label, without it for the test."""
    ready = [n.metadata.name for n in core.list_node(label_selector=f"{KEY}={VALUE}").items]
    assert ready, "the local cluster's Gaudi nodes should be scale-out ready"
    for node in ready:
        label(core, node, None)
    try:
        yield ready
    finally:
        for node in ready:
            with contextlib.suppress(Exception):
                label(core, node, VALUE)


def test_a_multi_worker_job_without_a_ready_node_says_why_then_runs_once_one_is(
    operator: Any, core: Any, custom: Any, namespace: str, hpus_free: Any, no_ready_node: list[str]
) -> None:
    hpus_free()
    create_job(custom, namespace, job_body("fabric", hpusPerWorker=1, workers={"replicas": 2}))

    def held() -> dict[str, Any] | None:
        c = condition(get_job(custom, namespace, "fabric"), "Scheduled")
        return c if c.get("reason") == "NoScaleOutReadyNode" else None

    c = wait_for(held, timeout=60, what="Scheduled: NoScaleOutReadyNode")
    assert isinstance(c, dict) and c["status"] == "False"
    message = c["message"]
    assert message.startswith("2 of 2 workers cannot be placed: no node carries the scale-out")
    assert api.SCALE_OUT_READY_LABEL in message and "Intel's network operator" in message
    assert "spec.gaudi.requireScaleOutReady: false" in message  # how to do without
    assert "node affinity/selector" in message  # the scheduler's own words
    pods = core.list_namespaced_pod(namespace).items
    assert len(pods) == 2 and not [p for p in pods if p.spec.node_name]

    # A single-worker job is not held by the gate at all.
    create_job(custom, namespace, job_body("solo", hpusPerWorker=1))
    wait_running_workers(core, namespace, "solo", 1)

    # The network operator labels a node: the scheduler places both workers there.
    label(core, no_ready_node[0], VALUE)
    pods = wait_running_workers(core, namespace, "fabric", 2, timeout=60)
    assert {p.spec.node_name for p in pods} == {no_ready_node[0]}
    wait_for(
        lambda: (
            condition(get_job(custom, namespace, "fabric"), "Scheduled").get("status") == "True"
        ),
        timeout=30,
        what="Scheduled: True",
    )
