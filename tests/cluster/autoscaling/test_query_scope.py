"""A job's PromQL reads only its own namespace, on the real Prometheus and API server.

Another namespace serves series that claim the job's labels (`gtj`, `gtj_namespace`: a
pod can set those) with a load that would double the job if read. The operator adds the
job's `namespace` matcher to every selector, so the job holds; a query that picks the
`namespace` label itself is refused: MetricsUnavailable with reason QueryNotScoped,
naming the field, and one Warning event."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from cluster.autoscaling.support import (
    LOAD_METRIC,
    autoscaled_job,
    autoscaling_status,
    condition,
    replicas_over,
    wait_reason,
)
from cluster.gtj import create_job, events_for, wait_running_workers
from conftest import wait_for

pytestmark = pytest.mark.cluster


def prometheus_value(cluster: Any, query: str) -> float | None:
    r = httpx.get(f"{cluster.prometheus_url}/api/v1/query", params={"query": query}, timeout=5)
    found = r.json()["data"]["result"]
    return float(found[0]["value"][1]) if found else None


def test_another_namespaces_series_never_reach_a_jobs_decision(
    autoscaler: Any, cluster: Any, custom: Any, core: Any, namespace: str, load: Any, hpus_free: Any
) -> None:
    hpus_free()
    other = f"{namespace}-other"
    load.set_load("scoped", namespace, 200)  # 100 per worker at 2: on target
    # A pod of another namespace serving the job's own labels, 10 x the load.
    load.set_load("scoped", namespace, 2000, pod_namespace=other)
    unscoped = f'sum({LOAD_METRIC}{{gtj="scoped",gtj_namespace="{namespace}"}})'
    wait_for(
        lambda: prometheus_value(cluster, unscoped) == 2200,
        timeout=30,
        what="both namespaces' series in Prometheus (read unscoped: 2200, 22 workers)",
    )
    create_job(custom, namespace, autoscaled_job("scoped", replicas=2, hpus=4))
    wait_running_workers(core, namespace, "scoped", 2, timeout=90)
    wait_reason(custom, namespace, "scoped", "WithinTolerance")
    assert autoscaling_status(custom, namespace, "scoped")["lastDecision"]["value"] == 200
    assert replicas_over(custom, namespace, "scoped", 4) == {2}


@pytest.mark.parametrize(
    "selector", ['namespace="{other}"', 'namespace=~".*"'], ids=["other", "any"]
)
def test_a_query_that_names_the_namespace_itself_is_refused(
    autoscaler: Any,
    cluster: Any,
    custom: Any,
    core: Any,
    namespace: str,
    load: Any,
    hpus_free: Any,
    selector: str,
) -> None:
    hpus_free()
    other = f"{namespace}-other"
    load.set_load("reach", namespace, 2000, pod_namespace=other)
    query = f'sum({LOAD_METRIC}{{gtj="$job",{selector.format(other=other)}}})'
    body = autoscaled_job("reach", replicas=2, hpus=4)
    body["spec"]["autoscaling"]["metric"]["query"] = query
    create_job(custom, namespace, body)
    wait_running_workers(core, namespace, "reach", 2, timeout=90)
    cond = wait_for(
        lambda: (
            (c := condition(custom, namespace, "reach", "MetricsUnavailable"))
            and c.get("status") == "True"
            and c
        ),
        timeout=30,
        what="MetricsUnavailable",
    )
    assert cond["reason"] == "QueryNotScoped", cond
    assert "spec.autoscaling.metric.query" in cond["message"], cond
    time.sleep(5)  # five more passes: still one event, still two workers
    refused = [e for e in events_for(core, namespace, "reach") if e.reason == "QueryNotScoped"]
    assert len(refused) == 1 and refused[0].type == "Warning", refused
    assert (refused[0].count or 1) == 1
    assert replicas_over(custom, namespace, "reach", 2) == {2}
