"""Helpers for the autoscaling cluster tests: the operator restarted with a fast autoscaler
loop and the cluster's Prometheus as default, a test exporter, and job short-hands."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from cluster.gtj import GROUP, PLURAL, VERSION, get_job, job_body
from conftest import wait_for
from gaudi_devtools.benchmarks.autoscale import LOAD_METRIC, MetricExporter

INTERVAL = 1.0  # the autoscaler's loop period in these tests
QUERY = f'sum({LOAD_METRIC}{{gtj="$job",gtj_namespace="$namespace"}})'


@contextmanager
def autoscaling_operator(operator: Any, cluster: Any) -> Iterator[Any]:
    """The session's operator with the autoscaler settings these tests need (restarted
    unless the previous autoscaling module left it so)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GAUDI3_AUTOSCALE_INTERVAL_SECONDS", str(INTERVAL))
        operator.ensure("--prometheus-url", cluster.prometheus_url)
        yield operator


@contextmanager
def exporter(cluster: Any, name: str) -> Iterator[MetricExporter]:
    e = MetricExporter(cluster.targets_dir, name)
    try:
        yield e
    finally:
        e.close()


def autoscaled_job(
    name: str,
    replicas: int = 2,
    min_replicas: int = 1,
    max_replicas: int = 8,
    hpus: int = 8,
    **autoscaling: Any,
) -> dict[str, Any]:
    extra = autoscaling.pop("spec", {})
    a = {
        "enabled": True,
        "metric": {"query": QUERY, "target": 100, "type": "AverageValue"},
        "tolerance": 0.1,
        "cooldownSeconds": 0,
        "scaleUp": {"stabilizationSeconds": 0, "maxStep": 2},
        "scaleDown": {"stabilizationSeconds": 0, "maxStep": 1},
        "minEfficiency": 0,
        "pendingTimeoutSeconds": 60,
        **autoscaling,
    }
    return job_body(
        name,
        hpusPerWorker=hpus,
        workers={"replicas": replicas, "minReplicas": min_replicas, "maxReplicas": max_replicas},
        autoscaling=a,
        **extra,
    )


def replicas(custom: Any, ns: str, name: str) -> int:
    return int(get_job(custom, ns, name)["spec"]["workers"]["replicas"])


def autoscaling_status(custom: Any, ns: str, name: str) -> dict[str, Any]:
    return (get_job(custom, ns, name).get("status") or {}).get("autoscaling") or {}


def last_reason(custom: Any, ns: str, name: str) -> str | None:
    return (autoscaling_status(custom, ns, name).get("lastDecision") or {}).get("reason")


def condition(custom: Any, ns: str, name: str, type_: str) -> dict[str, Any] | None:
    for c in (get_job(custom, ns, name).get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return c
    return None


def wait_reason(custom: Any, ns: str, name: str, reason: str, timeout: float = 60) -> None:
    wait_for(
        lambda: last_reason(custom, ns, name) == reason,
        timeout=timeout,
        what=f"{name}: decision {reason} (last {last_reason(custom, ns, name)})",
    )


def replicas_over(custom: Any, ns: str, name: str, seconds: float) -> set[int]:
    """Every spec.workers.replicas seen while polling for `seconds`."""
    seen = set()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        seen.add(replicas(custom, ns, name))
        time.sleep(0.25)
    return seen


def scale(custom: Any, ns: str, name: str, n: int) -> None:
    custom.patch_namespaced_custom_object_scale(
        GROUP, VERSION, ns, PLURAL, name, {"spec": {"replicas": n}}
    )


def last_scale(custom: Any, ns: str, name: str, to: int, timeout: float = 15) -> dict[str, Any]:
    """status.lastScale once it records the resize to `to` (written just after /scale)."""

    def check() -> dict[str, Any] | None:
        last = (get_job(custom, ns, name).get("status") or {}).get("lastScale") or {}
        return last if last.get("to") == to else None

    return wait_for(check, timeout=timeout, what=f"{name}: lastScale to {to}")  # type: ignore[return-value]
