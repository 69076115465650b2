"""`kubectl gtj [JOB]`: the demo's live numbers for every job, or one job rank by rank,
with its restarts, last failure and last scale decision."""

from __future__ import annotations

from gaudi_kubectl.metrics import JobProgress, RankReading
from gaudi_kubectl.overview import as_json, job_detail, job_row, jobs_table
from gaudi_kubectl.text import duration

from .support import NOW, ago, job, text

RANKS = JobProgress(
    ranks=(
        RankReading(0, "tiny-worker-0", 120, 3.1234, 105.25, 2, 115),
        RankReading(1, "tiny-worker-1", 119, 3.1234, 100.0, 2, 115),
    ),
    endpoints=2,
)
FAILED = {
    "reason": "Error",
    "pod": "tiny-worker-1",
    "node": "gaudi3-real-1",
    "exitCode": 137,
    "message": "worker exited 137",
    "time": ago(125),
}
SCALED = {"from": 2, "to": 1, "reason": "MetricBelowTarget", "value": 0.25, "time": ago(400)}


def test_a_row_has_the_demos_numbers_and_the_last_failure_and_scale() -> None:
    row = job_row(job(restarts=1, lastFailure=FAILED, lastScale=SCALED), RANKS, NOW)
    assert row.cells() == [
        "tiny",
        "Running",
        "2/2",
        "2",
        "120",
        "3.1234",
        "205.2",
        "1",
        "Error worker-1 exit 137, 2m5s ago",
        "2→1 MetricBelowTarget, 6m40s ago",
        "10m",
    ]


def test_a_job_without_readings_or_status_shows_dashes_not_zeros() -> None:
    row = job_row(job(phase=None), JobProgress(), NOW)
    assert row.cells()[1:8] == ["-", "0/2", "-", "-", "-", "-", "0"]
    assert row.last_failure == row.last_scale == "-"


def test_the_table_is_kubectl_like_with_a_namespace_column_for_all_namespaces() -> None:
    rows = [job_row(job(), RANKS, NOW)]
    plain = text(jobs_table(rows)).splitlines()
    assert plain[0].split() == [
        "NAME", "PHASE", "WORKERS", "WORLD", "STEP", "LOSS", "SAMPLES/S",
        "RESTARTS", "LAST", "FAILURE", "LAST", "SCALE", "AGE",
    ]  # fmt: skip
    assert plain[1].split()[:7] == ["tiny", "Running", "2/2", "2", "120", "3.1234", "205.2"]
    assert text(jobs_table(rows, all_namespaces=True)).split()[0] == "NAMESPACE"


def test_one_job_shows_each_ranks_step_loss_and_throughput_and_their_sum() -> None:
    body = job(restarts=1, lastFailure=FAILED, lastScale=SCALED)
    body["spec"]["autoscaling"] = {"enabled": True}
    body["status"]["autoscaling"] = {
        "lastDecision": {
            "time": ago(20),
            "current": 1,
            "replicas": 1,
            "reason": "WithinTolerance",
            "message": "ratio 1.02",
            "value": 98.0,
        }
    }
    nodes = {"tiny-worker-0": "gaudi3-real-0", "tiny-worker-1": "gaudi3-real-1"}
    out = text(job_detail(body, RANKS, nodes, NOW, "through the pod proxy"))
    lines = out.splitlines()
    assert "gtj/tiny in team: Running, workers 2/2 (min 1, max 2), 8 HPUs each, age 10m" in out
    assert "world size 2   step 120   loss 3.1234   samples/s 205.2 (sum of 2 ranks)" in out
    rank1 = next(line for line in lines if line.startswith("1 "))
    assert rank1.split() == [
        "1",
        "tiny-worker-1",
        "gaudi3-real-1",
        "119",
        "3.1234",
        "100.0",
        "2",
        "115",
    ]
    total = next(line for line in lines if line.startswith("all"))
    assert total.split() == ["all", "120", "3.1234", "205.2", "2"]
    assert "Error tiny-worker-1 on gaudi3-real-1 exit 137, 2m5s ago: worker exited 137" in out
    assert "2→1 MetricBelowTarget (value 0.25), 6m40s ago" in out
    assert "keep 1 (WithinTolerance, value 98), 20s ago: ratio 1.02" in out
    assert "through the pod proxy: 2 of 2 endpoints answered" in out


def test_one_job_says_which_endpoints_did_not_answer_or_why_none_could_be_read() -> None:
    silent = JobProgress(endpoints=2, unreachable=("tiny-worker-0:9400", "tiny-worker-1:9400"))
    out = text(job_detail(job(), silent, {}, NOW, "pod proxy"))
    assert "pod proxy: 0 of 2 endpoints answered (no answer from tiny-worker-0:9400" in out
    assert "RANK" not in out  # no rank table without ranks
    forbidden = JobProgress(problem="forbidden (RBAC: get on pods/proxy)")
    assert "pod proxy: forbidden (RBAC" in text(job_detail(job(), forbidden, {}, NOW, "pod proxy"))


def test_json_has_the_same_numbers_as_numbers() -> None:
    out = as_json(job(restarts=1), RANKS, {"tiny-worker-0": "n0"}, "pod proxy")
    assert (out["step"], out["samplesPerSecond"], out["restarts"]) == (120, 205.25, 1)
    assert out["ranks"][0] == {
        "rank": 0,
        "pod": "tiny-worker-0",
        "node": "n0",
        "step": 120,
        "loss": 3.1234,
        "samplesPerSecond": 105.25,
        "worldSize": 2,
        "lastCheckpointStep": 115,
    }


def test_durations_read_like_kubectls_age_column() -> None:
    seconds = (0, 59, 119, 125, 600, 3 * 3600 + 120, 30 * 3600, 3 * 86400 + 3600)
    assert [duration(s) for s in seconds] == [
        "0s", "59s", "119s", "2m5s", "10m", "3h2m", "30h", "3d1h",
    ]  # fmt: skip
