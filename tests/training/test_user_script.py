"""A user's own script runs under the launcher with the same environment and helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

from gaudi_train.checkpoint import latest_checkpoint

pytestmark = pytest.mark.training

EXAMPLE = Path(__file__).resolve().parents[2] / "training-image" / "examples" / "regression.py"


def test_user_script_gets_rank_info_checkpoints_and_resume(launch, job_env, tmp_path) -> None:
    ckpt = tmp_path / "ckpt"
    env = job_env(GAUDI3_JOB_NAME="mine")
    flags = ("--nproc", "2", "--no-metrics", "--checkpoint-dir", str(ckpt))
    flags += ("--checkpoint-interval", "5", "--micro-batch", "4")

    first = launch(*flags, "--script", str(EXAMPLE), "--steps", "10", env=env)
    assert first.wait() == 0, first.tail()
    out = first.text()
    assert "rank 0 of 2 (local 0) on cpu via gloo, job 'mine', restart 0" in out
    assert "rank 1 of 2 (local 1) on cpu via gloo, job 'mine', restart 0" in out
    saved = latest_checkpoint(ckpt)
    assert saved is not None and saved.step == 10
    assert saved.extra["user"] == {"note": "user state saved with every checkpoint"}

    second = launch(*flags, "--script", str(EXAMPLE), "--steps", "15", env=env)
    assert second.wait() == 0, second.tail()
    assert "rank 0 restored at step 10" in second.text()
    assert "finished at step 15" in second.text()
    assert latest_checkpoint(ckpt).step == 15
