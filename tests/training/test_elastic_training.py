"""Real torchrun runs on CPU with gloo: training, failover, resize, SIGTERM, metrics."""

from __future__ import annotations

import json
import os
import re
import signal
import urllib.request
from pathlib import Path

import pytest

from gaudi_train.checkpoint import TMP_PREFIX, complete_checkpoints, latest_checkpoint

pytestmark = pytest.mark.training

STEP_LINE = re.compile(r"\[rank 0\] gaudi_train\.workload INFO: step (\d+) loss")

COMMON = ("--nproc", "2", "--no-metrics", "--log-every", "10")


def test_two_process_run_trains_the_reference_model(launch, tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    run = launch(*COMMON, "--max-steps", "40", "--checkpoint-dir", str(ckpt))
    assert run.wait() == 0, run.tail()
    losses = dict(run.steps())
    assert sorted(losses) == [10, 20, 30, 40]
    assert losses[40] < 0.8 * losses[10], losses
    final = latest_checkpoint(ckpt)
    assert final is not None and final.step == 40 and final.world_size == 2


def test_killed_worker_is_restarted_and_resumes_from_last_checkpoint(
    launch, tmp_path: Path
) -> None:
    ckpt = tmp_path / "ckpt"
    # 140 steps remain after step 60, so the kill lands mid-run (the poll sees step 60 a few
    # steps late); a step is ~40 ms here, and the 200 more of a 400-step run took ~8 s.
    run = launch(
        *COMMON, "--max-steps", "200", "--checkpoint-dir", str(ckpt), "--checkpoint-interval", "20"
    )
    run.wait_for_step(60)
    victim = run.workers()[-1]
    os.kill(victim, signal.SIGKILL)
    assert run.wait() == 0, run.tail()

    text = run.text()
    resumed = [
        (int(m.group(1)), m.end())
        for m in re.finditer(r"\[rank 0\].*resumed from step (\d+)", text)
    ]
    assert len(resumed) == 1, run.tail()
    step, where = resumed[0]
    assert step >= 60, "the step continues from the last checkpoint, not from 0"
    # The first step rank 0 logs after the restart is the one after the checkpoint.
    after = STEP_LINE.findall(text[where:])
    assert after and int(after[0]) == step + 10, after[:3]
    assert latest_checkpoint(ckpt).step == 200
    assert not any(p.name.startswith(TMP_PREFIX) for p in ckpt.iterdir())


def test_checkpoint_resumes_on_a_new_world_size_with_the_same_global_batch(
    launch, tmp_path: Path
) -> None:
    ckpt = str(tmp_path / "ckpt")
    batch = ("--global-batch", "16", "--micro-batch", "4", "--checkpoint-dir", ckpt)
    common = ("--no-metrics", "--log-every", "10", "--checkpoint-interval", "10")

    first = launch("--nproc", "2", *common, *batch, "--max-steps", "20")
    assert first.wait() == 0, first.tail()
    assert "global batch 16 = micro 4 x world 2 x accumulation 2" in first.text()

    # 2 -> 1: accumulation doubles, the step continues.
    second = launch("--nproc", "1", *common, *batch, "--max-steps", "30")
    assert second.wait() == 0, second.tail()
    assert "resumed from step 20 (written by 2 processes, now 1)" in second.text()
    assert "global batch 16 = micro 4 x world 1 x accumulation 4" in second.text()
    assert [s for s, _ in second.steps()] == [30]

    # 1 -> 2 without --global-batch: the job keeps the global batch of its checkpoint.
    third = launch(
        "--nproc", "2", *common, "--micro-batch", "4", "--checkpoint-dir", ckpt, "--max-steps", "40"
    )
    assert third.wait() == 0, third.tail()
    assert "resumed from step 30 (written by 1 processes, now 2)" in third.text()
    assert "global batch 16 = micro 4 x world 2 x accumulation 2" in third.text()

    losses = dict(first.steps() + second.steps() + third.steps())
    assert losses[40] < losses[30] < losses[10], "training continues, it does not restart"
    saved = {c.step: c for c in complete_checkpoints(Path(ckpt))}
    assert saved[30].world_size == 1 and saved[40].world_size == 2
    assert {c.extra["global_batch"] for c in saved.values()} == {16}
    assert saved[40].extra["samples_seen"] == 40 * 16


def test_impossible_batch_stops_with_the_valid_world_sizes(launch) -> None:
    run = launch("--nproc", "3", "--global-batch", "16", "--micro-batch", "4", "--no-metrics")
    assert run.wait() == 2
    assert "Valid world sizes: 1, 2, 4" in run.text()


def test_sigterm_leaves_a_complete_checkpoint_of_the_current_step(launch, tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    run = launch(
        *COMMON, "--max-steps", "100000", "--checkpoint-dir", str(ckpt),
        "--checkpoint-interval", "100000",
    )  # fmt: skip
    run.wait_for_step(30)
    run.proc.send_signal(signal.SIGTERM)
    assert run.wait() == 128 + signal.SIGTERM, run.tail()

    stopped = re.findall(r"\[rank 0\].*stopping at step (\d+): checkpoint saved", run.text())
    assert stopped, run.tail()
    step = int(stopped[0])
    assert step >= 30
    latest = latest_checkpoint(ckpt)
    assert latest is not None and latest.step == step
    assert sorted(p.name for p in latest.path.iterdir()) == [
        ".metadata",
        "COMPLETE.json",
        "__0_0.distcp",
        "__1_0.distcp",
        "rng-rank0.pt",
        "rng-rank1.pt",
    ]
    assert not any(p.name.startswith(TMP_PREFIX) for p in ckpt.iterdir())


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith("gaudi3_train_"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_metrics_endpoint_serves_changing_values_during_a_run(
    launch, job_env, metrics_port: int, tmp_path: Path
) -> None:
    port = metrics_port
    env = job_env(GAUDI3_JOB_NAME="demo", GAUDI3_NAMESPACE="team-a")
    run = launch(
        "--nproc", "2", "--metrics-port", str(port), "--max-steps", "100000",
        "--checkpoint-dir", str(tmp_path / "ckpt"), "--checkpoint-interval", "25",
        env=env,
    )  # fmt: skip
    run.wait_for_step(30)

    first = [scrape(port), scrape(port + 1)]
    run.wait_for(lambda: scrape(port)[step_key(0)] >= first[0][step_key(0)] + 10, 60, "progress")
    second = [scrape(port), scrape(port + 1)]
    run.stop()

    for rank in (0, 1):
        a, b = first[rank], second[rank]
        assert b[step_key(rank)] > a[step_key(rank)] > 0
        assert (
            b[key("gaudi3_train_samples_total", rank)] > a[key("gaudi3_train_samples_total", rank)]
        )
        assert b[key("gaudi3_train_step_seconds_count", rank)] > 0
        assert b[key("gaudi3_train_samples_per_second", rank)] > 0
        assert 0 < b[key("gaudi3_train_loss", rank)] < 10
        assert b[key("gaudi3_train_world_size", rank)] == 2
        assert b[key("gaudi3_train_restarts", rank)] == 0
        assert b[key("gaudi3_train_last_checkpoint_step", rank)] >= 25
        assert b[key("gaudi3_train_last_checkpoint_timestamp_seconds", rank)] > 1.7e9
    # Each rank processes micro batch (8) samples per step.
    assert second[0][key("gaudi3_train_samples_total", 0)] == 8 * second[0][step_key(0)]


def key(name: str, rank: int) -> str:
    return f'{name}{{gtj="demo",gtj_namespace="team-a",rank="{rank}"}}'


def step_key(rank: int) -> str:
    return key("gaudi3_train_step", rank)


def test_benchmark_reports_throughput_with_device_world_and_batch() -> None:
    from gaudi_train.benchmark import run_benchmark

    result = run_benchmark(nproc=1, steps=5, warmup_steps=2, device="cpu")
    assert result["device"] == "cpu" and result["backend"] == "gloo"
    assert result["world_size"] == 1 and result["global_batch"] == 8
    assert result["timed_steps"] == 5
    assert result["samples_per_second"] > 0 and result["step_seconds_mean"] > 0
    json.dumps(result)  # the operator CLI prints it as JSON
