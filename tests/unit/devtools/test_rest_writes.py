"""`gaudi3 benchmark rest` counts job writes from kube-apiserver's own request counter."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from gaudi_devtools.benchmarks.rest import Window, delta, measure, write_counts
from gaudi_devtools.benchmarks.writes import event_writes

pytestmark = pytest.mark.unit

JOB = 'group="gaudi.scalestarter.dev",resource="gauditrainingjobs",version="v1alpha1"'


def line(labels: str, value: float, code: str = "200", dry_run: str = "") -> str:
    return f'apiserver_request_total{{code="{code}",dry_run="{dry_run}",{labels}}} {value}'


class FakeCluster:
    """Answers `kubectl get --raw /metrics` and `kubectl get events` with each in turn."""

    def __init__(self, texts: list[str], events: list[list[Any]] | None = None) -> None:
        self.texts = texts
        self.events = events or []

    def kubectl(self, *args: str) -> Any:
        if args[:2] == ("get", "events"):
            return SimpleNamespace(stdout=json.dumps({"items": self.events.pop(0)}))
        assert args == ("get", "--raw", "/metrics")
        return SimpleNamespace(stdout=self.texts.pop(0))


def measured(
    before: str, after: str, jobs: int, seconds: float, events: list[list[Any]] | None = None
) -> Window:
    cluster = FakeCluster([before, after], events)
    w = measure(cluster, jobs, 0, namespace="ns" if events else None)
    w.seconds = seconds
    return w


def event(component: str, count: int) -> dict[str, Any]:
    return {"source": {"component": component}, "count": count}


TEXT = "\n".join(
    [
        "# HELP apiserver_request_total [STABLE] Counter of apiserver requests",
        "# TYPE apiserver_request_total counter",
        line(f'{JOB},subresource="status",verb="PATCH"', 7),
        line(f'{JOB},subresource="status",verb="PATCH"', 2, code="409"),
        line(f'{JOB},subresource="",verb="POST"', 3, code="201"),
        line(f'{JOB},subresource="",verb="PATCH"', 5, dry_run="All"),
        line(f'{JOB},subresource="",verb="GET"', 900),
        line('group="",resource="pods",subresource="status",verb="PATCH",version="v1"', 40),
        "",
    ]
)


def test_only_stored_writes_of_the_job_resource_count() -> None:
    assert write_counts(TEXT) == {("PATCH", "status"): 9.0, ("POST", ""): 3.0}


def test_the_figure_is_writes_per_job_per_minute() -> None:
    before = {("PATCH", "status"): 9.0}
    after = {("PATCH", "status"): 12.0, ("PUT", "scale"): 1.0}
    w = Window(jobs=10, seconds=120, writes=delta(before, after))
    assert w.writes == {("PATCH", "status"): 3.0, ("PUT", "scale"): 1.0}
    assert w.per_job_per_minute == pytest.approx(0.2)


def test_the_operators_events_count_beside_its_job_writes() -> None:
    events = 'group="",resource="events",subresource="",verb="POST",version="v1"'
    kwok = 'group="",resource="pods",subresource="status",verb="PATCH",version="v1"'
    before = TEXT
    after = "\n".join([TEXT, line(events, 4, code="201"), line(kwok, 100)])
    w = measured(before, after, jobs=2, seconds=60)
    assert w.total == 0  # no write of the job resource
    assert (w.operator.events, w.operator.status, w.operator.total) == (4, 0, 4)
    assert w.operator_per_job_per_minute == pytest.approx(2.0)


def test_event_writes_are_the_operators_own_by_the_events_source() -> None:
    events = 'group="",resource="events",subresource="",verb="PATCH",version="v1"'
    after = "\n".join([TEXT, line(events, 30)])
    # kube-controller-manager's endpoint controllers write 29 of them, the operator one.
    first = [event("endpoint-slice-controller", 10), event("gaudi-operator", 1)]
    last = [
        event("endpoint-slice-controller", 39),
        event("gaudi-operator", 1),
        event("gaudi-operator", 1),
    ]
    w = measured(TEXT, after, jobs=1, seconds=60, events=[first, last])
    assert (w.operator.events, w.others_events) == (1, 29)
    assert w.operator_per_job_per_minute == pytest.approx(1.0)
    assert event_writes(json.dumps({"items": last})) == {
        "endpoint-slice-controller": 39,
        "gaudi-operator": 2,
    }
