"""Writes per job from kube-apiserver's own request counters (benchmarks/writes.py)."""

from __future__ import annotations

import pytest

from gaudi_devtools.benchmarks.writes import (
    all_reads,
    all_writes,
    controller_writes,
    request_totals,
)

pytestmark = pytest.mark.unit


def sample(
    verb: str,
    resource: str,
    value: int,
    group: str = "",
    sub: str = "",
    code: str = "201",
    scope: str = "resource",
) -> str:
    return (
        f'apiserver_request_total{{code="{code}",component="apiserver",dry_run="",'
        f'group="{group}",resource="{resource}",scope="{scope}",subresource="{sub}",'
        f'verb="{verb}",version="v1"}} {value}'
    )


G, P = "gaudi.scalestarter.dev", "gauditrainingjobs"


def test_a_controllers_writes_are_told_from_everyone_elses() -> None:
    before = request_totals(
        "\n".join(
            [
                "# HELP apiserver_request_total [STABLE] Counter of apiserver requests",
                sample("POST", "pods", 10),
                sample("PATCH", P, 3, group=G, sub="status", code="200"),
            ]
        )
    )
    after = request_totals(
        "\n".join(
            [
                sample("POST", "pods", 18),  # 8 workers
                sample("POST", "pods", 1, code="409"),  # a duplicate: still a write request
                sample("POST", "services", 2),
                sample("PATCH", P, 7, group=G, sub="status", code="200"),
                sample("PATCH", P, 1, group=G, sub="status", code="409"),
                sample("POST", "events", 2),
                sample("POST", P, 2, group=G),  # the load generator's job creates
                sample("POST", "pods", 8, sub="binding"),  # the scheduler's
                sample("PATCH", "pods", 16, sub="status", code="200"),  # kwok's
                sample("POST", "events", 8, group="events.k8s.io"),  # the scheduler's
                sample("GET", "pods", 99, code="200"),
                sample("LIST", P, 5, group=G, code="200"),
                # a namespace's teardown: the namespace controller's collection delete
                sample("DELETE", "pods", 1, code="200", scope="namespace"),
            ]
        )
    )
    w = controller_writes(before, after, G, P)
    assert (w.pods, w.services, w.status, w.events, w.other) == (9, 2, 5, 2, 0)
    assert w.total == 18
    assert w.per(2)["total"] == 9.0


def test_every_components_writes_and_reads_are_counted_by_resource() -> None:
    before = request_totals(
        "\n".join([sample("POST", "pods", 10), sample("GET", "pods", 5, code="200")])
    )
    after = request_totals(
        "\n".join(
            [
                sample("POST", "pods", 18),
                sample("POST", "pods", 8, sub="binding"),
                sample("PATCH", "pods", 16, sub="status", code="200"),
                sample("PATCH", P, 3, group=G, sub="status", code="200"),
                sample("POST", "events", 8, group="events.k8s.io"),
                sample("GET", "pods", 7, code="200"),
                sample("WATCH", P, 1, group=G, code="200"),
            ]
        )
    )
    writes = all_writes(before, after)
    assert writes == {
        "pods": 8,
        "pods/binding": 8,
        "pods/status": 16,
        f"{P}/status": 3,
        "events": 8,
    }
    assert all_reads(before, after) == {"GET pods": 2, f"WATCH {P}": 1}
