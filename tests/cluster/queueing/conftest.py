"""Kueue from its Go module on the test cluster, and a queue for each test: a ClusterQueue
with room for exactly one 8-HPU job, and the LocalQueue `gaudi` in the test's namespace."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

KUEUE = ("kueue.x-k8s.io", "v1beta2")
LOCAL_QUEUE = "gaudi"
FLAVOR = "gaudi3"
QUOTA_HPUS = 8  # one job of 2 workers x 4 HPUs


@pytest.fixture(scope="session")
def kueue(cluster: Any) -> Iterator[Any]:
    from gaudi_devtools import kueue as kueue_process

    ours = not kueue_process.ready(cluster)
    kueue_process.start(cluster)
    yield cluster
    if ours:
        kueue_process.stop(cluster)


@pytest.fixture
def queue(kueue: Any, custom: Any, namespace: str) -> Iterator[dict[str, str]]:
    """{"local": LocalQueue name, "cluster": ClusterQueue name}."""
    group, version = KUEUE
    with contextlib.suppress(Exception):  # shared by every test; already there is fine
        custom.create_cluster_custom_object(
            group,
            version,
            "resourceflavors",
            {
                "apiVersion": f"{group}/{version}",
                "kind": "ResourceFlavor",
                "metadata": {"name": FLAVOR},
            },
        )
    cq = f"cq-{uuid.uuid4().hex[:6]}"
    resources = {
        "cpu": "1000",
        "memory": "100Ti",
        "habana.ai/gaudi": str(QUOTA_HPUS),
        "hugepages-2Mi": "100Ti",
    }
    custom.create_cluster_custom_object(
        group,
        version,
        "clusterqueues",
        {
            "apiVersion": f"{group}/{version}",
            "kind": "ClusterQueue",
            "metadata": {"name": cq},
            "spec": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "queueingStrategy": "StrictFIFO",
                "preemption": {"withinClusterQueue": "LowerPriority"},
                "resourceGroups": [
                    {
                        "coveredResources": list(resources),
                        "flavors": [
                            {
                                "name": FLAVOR,
                                "resources": [
                                    {"name": k, "nominalQuota": v} for k, v in resources.items()
                                ],
                            }
                        ],
                    }
                ],
            },
        },
    )
    custom.create_namespaced_custom_object(
        group,
        version,
        namespace,
        "localqueues",
        {
            "apiVersion": f"{group}/{version}",
            "kind": "LocalQueue",
            "metadata": {"name": LOCAL_QUEUE},
            "spec": {"clusterQueue": cq},
        },
    )
    yield {"local": LOCAL_QUEUE, "cluster": cq}
    with contextlib.suppress(Exception):
        custom.delete_cluster_custom_object(group, version, "clusterqueues", cq)


@pytest.fixture
def priority_classes(kueue: Any, custom: Any) -> Iterator[dict[str, str]]:
    """Two WorkloadPriorityClasses, {"low": name, "high": name}."""
    group, version = KUEUE
    tag = uuid.uuid4().hex[:6]
    names = {"low": f"low-{tag}", "high": f"high-{tag}"}
    for level, value in (("low", 10), ("high", 1000)):
        custom.create_cluster_custom_object(
            group,
            version,
            "workloadpriorityclasses",
            {
                "apiVersion": f"{group}/{version}",
                "kind": "WorkloadPriorityClass",
                "metadata": {"name": names[level]},
                "value": value,
            },
        )
    yield names
    for name in names.values():
        with contextlib.suppress(Exception):
            custom.delete_cluster_custom_object(group, version, "workloadpriorityclasses", name)
