"""`gaudi3 benchmark rest` counts job writes from kube-apiserver's own request counter."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from gaudi_devtools.benchmarks.rest import Window, delta, measure, write_counts

pytestmark = pytest.mark.unit

JOB = 'group="gaudi.scalestarter.dev",resource="gauditrainingjobs",version="v1alpha1"'


def line(labels: str, value: float, code: str = "200", dry_run: str = "") -> str:
    return f'apiserver_request_total{{code="{code}",dry_run="{dry_run}",{labels}}} {value}'


class FakeCluster:
    """Answers `kubectl get --raw /metrics` with each text in turn."""

    def __init__(self, *texts: str) -> None:
        self.texts = list(texts)

    def kubectl(self, *args: str) -> Any:
        assert args == ("get", "--raw", "/metrics")
        return SimpleNamespace(stdout=self.texts.pop(0))


def measured(before: str, after: str, jobs: int, seconds: float) -> Window:
    w = measure(FakeCluster(before, after), jobs, 0)
    w.seconds = seconds
    return w


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
