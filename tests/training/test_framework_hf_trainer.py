"""A Hugging Face Trainer script, run unchanged by the launcher, resumes after a crash.

The model is built from a config with random weights and the data is generated, so
nothing is downloaded (HF_HUB_OFFLINE=1 makes any attempt fail instead).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from training.frameworks import EXAMPLES, batch_plans, crash, starts, steps

pytestmark = pytest.mark.training

SCRIPT = str(EXAMPLES / "hf_trainer_tiny.py")
BATCH = ("--global-batch", "16", "--micro-batch", "4")


def checkpoints(ckpt: Path) -> dict[int, dict[str, Any]]:
    """step -> the Trainer's own trainer_state.json of each checkpoint-N folder."""
    found = {}
    for path in ckpt.glob("checkpoint-*"):
        state = path / "trainer_state.json"
        if state.exists():
            found[int(path.name.split("-")[1])] = json.loads(state.read_text())
    return found


def test_hf_trainer_resumes_from_its_last_checkpoint_after_the_pod_is_killed(
    launch, job_env, tmp_path: Path
) -> None:
    ckpt = tmp_path / "ckpt"
    env = job_env(HF_HUB_OFFLINE="1")
    flags = ("--nproc", "2", "--no-metrics", "--checkpoint-dir", str(ckpt))
    flags += ("--checkpoint-interval", "10", "--checkpoint-keep", "2", *BATCH)
    script = ("--script", SCRIPT, "--log-every", "5")

    first = launch(*flags, *script, "--max-steps", "100000", env=env)
    first.wait_for(lambda: max(checkpoints(ckpt), default=0) >= 40, 120, "checkpoint-40")
    crash(first.proc)
    saved = max(checkpoints(ckpt))  # read after the kill: no save can race with it
    assert len(checkpoints(ckpt)) == 2, "save_total_limit = GAUDI3_CHECKPOINT_KEEP"
    before = dict(steps(first.text()))
    assert starts(first.text()) == [0]
    assert batch_plans(first.text()) == [(16, 4, 2, 2)]

    second = launch(*flags, *script, "--max-steps", str(saved + 20), env=env)
    assert second.wait(120) == 0, second.tail()
    text = second.text()
    assert f"resuming from {ckpt / f'checkpoint-{saved}'}" in text
    assert starts(text) == [saved], "the Trainer continues at the saved step, not at 0"
    after = steps(text)
    assert [s for s, _ in after] == list(range(saved + 5, saved + 21, 5))
    # The loss continues from the level reached before the crash (the Trainer skips the
    # batches already trained on), well below a fresh model's ln(32) = 3.5.
    assert after[0][1] < before[5] - 0.5, (before, after)
    assert abs(after[0][1] - before[saved]) < 0.3, (before[saved], after)
    # Same weights, optimizer, data position and RNG: steps logged both before the crash
    # and after the resume have the same loss (when the crash came late enough for any).
    for step in before.keys() & dict(after).keys():
        assert dict(after)[step] == pytest.approx(before[step], abs=2e-4), step

    # The final checkpoint's own log history: the steps before the checkpoint, then the
    # resumed ones, each once and in order (a restart from 0 would repeat 5, 10, ...).
    final = checkpoints(ckpt)[saved + 20]
    assert final["global_step"] == saved + 20
    logged = [e["step"] for e in final["log_history"] if "loss" in e]
    assert logged == list(range(5, saved + 21, 5))


def test_hf_trainer_keeps_the_global_batch_when_it_resumes_on_fewer_processes(
    launch, job_env, tmp_path: Path
) -> None:
    ckpt = tmp_path / "ckpt"
    env = job_env(HF_HUB_OFFLINE="1")
    common = ("--no-metrics", "--checkpoint-dir", str(ckpt), "--checkpoint-interval", "10")
    common += BATCH

    first = launch("--nproc", "2", *common, "--script", SCRIPT, "--max-steps", "20", env=env)
    assert first.wait(120) == 0, first.tail()
    assert batch_plans(first.text()) == [(16, 4, 2, 2)]

    second = launch("--nproc", "1", *common, "--script", SCRIPT, "--max-steps", "30", env=env)
    assert second.wait(120) == 0, second.tail()
    assert batch_plans(second.text()) == [(16, 4, 1, 4)], "accumulation doubles"
    assert starts(second.text()) == [20]
    resumed = steps(second.text())
    assert [s for s, _ in resumed] == [30]
    assert resumed[0][1] < dict(steps(first.text()))[20], "the loss keeps falling"
    states = checkpoints(ckpt)
    assert states[30]["global_step"] == 30
    # The Trainer's own record: 4 micro batches of 4 per step now, 2 of 4 per rank before.
    assert states[30]["train_batch_size"] == states[20]["train_batch_size"] == 4
