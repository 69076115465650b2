"""`gaudi3 benchmark reconcile --versus kubeflow,bare`: one table, every peer and ratio."""

from __future__ import annotations

import pytest
from rich.console import Console

from gaudi_devtools.benchmarks.kubeflow import KubeflowResult
from gaudi_devtools.benchmarks.reconcile import _table

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


def render(**peers: object) -> str:
    console = Console(width=300, record=True)
    console.print(_table(10, 1, 10, OURS, 150.0, 3.2, **peers))  # type: ignore[arg-type]
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
