"""`gaudi3 benchmark reconcile --versus kubeflow,bare`: one table, every peer and ratio."""

from __future__ import annotations

import asyncio

import pytest
from rich.console import Console

from gaudi_devtools.benchmarks.kubeflow import KubeflowResult
from gaudi_devtools.benchmarks.reconcile import _pod_running, _table, _Watched

pytestmark = pytest.mark.unit

WRITES = {"total": 8.0, "pods": 4.0, "services": 1.0, "status": 2.0, "events": 1.0, "other": 0.0}
OURS = {
    "submitted": 1.0,
    "first_running": 2.0,
    "all_running": 10.0,
    "cleaned": 5.0,
    "writes": WRITES,
}
BARE = {"submitted": 0.5, "all_running": 4.0, "cleaned": 3.0, "writes": {**WRITES, "total": 4.0}}
KF = KubeflowResult(
    jobs=10,
    workers=1,
    submitted=2.0,
    all_pods_running=30.0,
    all_jobs_running=40.0,
    cleaned=9.0,
    peak_rss_mib=90.0,
    writes={**WRITES, "total": 12.0},
)


def render(r: dict[str, object] = OURS, **peers: object) -> str:
    console = Console(width=300, record=True)
    console.print(_table(10, 1, 10, r, 150.0, 3.2, **peers))  # type: ignore[arg-type]
    return console.export_text()


def test_both_peers_give_every_ratio_in_one_table() -> None:
    text = render(b=BARE, kf=KF)
    assert "Kubeflow v1.9.3" in text and "bare pods" in text
    jobs_row = next(line for line in text.splitlines() if "all jobs Running" in line)
    # ours/bare 10/4, Kubeflow/bare 40/4, ours/Kubeflow 10/40
    assert "2.50x" in jobs_row and "10.00x" in jobs_row and "0.25x" in jobs_row
    rss_row = next(line for line in text.splitlines() if "peak RSS" in line)
    assert "150 MiB" in rss_row and "90 MiB" in rss_row and "1.67x" in rss_row


def test_without_peers_only_the_operator_column() -> None:
    text = render(b=None, kf=None)
    assert "Kubeflow" not in text and "bare" not in text


def test_writes_per_job_stand_beside_the_times() -> None:
    text = render(b=BARE, kf=KF)
    row = next(line for line in text.splitlines() if "writes per job" in line)
    assert "floor 5" in row  # 1 worker + 4
    # ours 8, Kubeflow 12, bare 4: ours/bare 2.00x, ours/Kubeflow 0.67x
    assert "8.00" in row and "12.00" in row and "4.00" in row and "0.67x" in row


def test_the_clusters_cpu_stands_beside_bare_pods_by_component() -> None:
    ours = {
        **OURS,
        "all_pods_running": 9.5,
        "cluster_cpu": {"kube-apiserver": 30.0, "operator": 10.0},
    }
    bare = {**BARE, "cluster_cpu": {"kube-apiserver": 12.0}}
    text = render(ours, b=bare, kf=None)
    lines = text.splitlines()
    total = next(line for line in lines if "CPU to all Running" in line)
    assert "40.0 s" in total and "12.0 s" in total and "3.33x" in total
    api = next(line for line in lines if "kube-apiserver" in line)
    assert "30.0 s" in api and "2.50x" in api
    pods = next(line for line in lines if "all pods Running" in line)
    assert "9.50 s" in pods and "4.00 s" in pods


def test_a_run_is_timed_by_the_watch_events_it_sees() -> None:
    w = _Watched(None, "/api/v1/namespaces/x/pods", "", _pod_running, 2)  # type: ignore[arg-type]

    def pod(name: str, phase: str) -> dict[str, object]:
        return {"metadata": {"name": name}, "status": {"phase": phase}}

    w._see("ADDED", pod("a", "Pending"))
    assert w.first is None
    w._see("MODIFIED", pod("a", "Running"))
    first = w.first
    assert first is not None and w.all is None
    w._see("MODIFIED", pod("a", "Running"))  # the same pod again counts once
    assert w.all is None
    w._see("DELETED", pod("a", "Running"))
    w._see("MODIFIED", pod("b", "Running"))
    assert w.all is None, "a deleted pod is no longer Running"
    w._see("ADDED", pod("c", "Running"))
    assert w.all is not None and w.first == first


def test_a_watch_answered_with_an_error_is_opened_again_not_read_as_events() -> None:
    """A kind whose CRD was only just made answers its first watch with a 404 Status."""

    class Response:
        def __init__(self, status: int, lines: list[bytes]) -> None:
            self.status, self.lines = status, lines
            self.content = self._lines()

        async def _lines(self):  # type: ignore[no-untyped-def]
            for line in self.lines:
                yield line

        def release(self) -> None:
            pass

    running = b'{"type":"ADDED","object":{"metadata":{"name":"a","resourceVersion":"5"},'
    running += b'"status":{"phase":"Running"}}}\n'
    answers = [
        Response(404, [b'{"kind":"Status","status":"Failure","code":404}\n']),
        Response(200, [running]),
    ]

    class Api:
        calls = 0

        async def call_api(self, *args: object, **kwargs: object) -> Response:
            Api.calls += 1
            return answers.pop(0)

    clients = type("Clients", (), {"api_client": Api()})()
    w = _Watched(clients, "/apis/x/v1/namespaces/x/things", "", _pod_running, 1)  # type: ignore[arg-type]
    asyncio.run(asyncio.wait_for(w._watch(), 5))
    assert Api.calls == 2 and w.all is not None and w.running == {"a"}
