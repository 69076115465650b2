"""A PyTorch Lightning script, run unchanged by the launcher, resumes after a crash."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.frameworks import EXAMPLES, batch_plans, crash, starts, steps

pytestmark = pytest.mark.training

SCRIPT = str(EXAMPLES / "lightning_regression.py")
BATCH = ("--global-batch", "16", "--micro-batch", "4")


def saved_step(ckpt: Path) -> int:
    """The step Lightning's own last.ckpt (a link to the newest step=N.ckpt) holds. The
    link is resolved once, before the load: a run still training moves it meanwhile."""
    target = (ckpt / "last.ckpt").resolve()
    state = torch.load(target, map_location="cpu", weights_only=False)
    assert target.name == f"step={state['global_step']}.ckpt"
    return int(state["global_step"])


def test_lightning_resumes_from_its_last_checkpoint_after_the_pod_is_killed(
    launch, tmp_path: Path
) -> None:
    ckpt = tmp_path / "ckpt"
    flags = ("--nproc", "2", "--no-metrics", "--checkpoint-dir", str(ckpt))
    flags += ("--checkpoint-interval", "10", *BATCH)
    script = ("--script", SCRIPT, "--log-every", "5")

    first = launch(*flags, *script, "--max-steps", "100000")
    first.wait_for(lambda: (ckpt / "last.ckpt").exists() and saved_step(ckpt) >= 50, 90, "ckpt")
    crash(first.proc)
    saved = saved_step(ckpt)  # read after the kill: no save can race with it
    before = dict(steps(first.text()))
    assert starts(first.text()) == [0]
    assert batch_plans(first.text()) == [(16, 4, 2, 2)]
    assert max(before) >= saved >= 50

    second = launch(*flags, *script, "--max-steps", str(saved + 20))
    assert second.wait(120) == 0, second.tail()
    text = second.text()
    assert f"Restored all states from the checkpoint at {ckpt / 'last.ckpt'}" in text
    assert starts(text) == [saved], "Lightning continues at the saved step, not at 0"
    after = steps(text)
    assert [s for s, _ in after] == list(range(saved + 5, saved + 21, 5))
    # The loss continues from the level reached before the crash: far below where a
    # fresh model starts (step 1), close to the last losses before the checkpoint.
    fresh = before[1]
    recent = max(loss for s, loss in before.items() if saved - 15 <= s <= saved)
    assert after[0][1] < fresh / 10, (fresh, after)
    assert after[0][1] < 5 * recent + 0.05, (recent, after)
    assert saved_step(ckpt) == saved + 20
    assert f"finished at step {saved + 20}" in text


def test_lightning_keeps_the_global_batch_when_it_resumes_on_fewer_processes(
    launch, tmp_path: Path
) -> None:
    ckpt = tmp_path / "ckpt"
    common = ("--no-metrics", "--checkpoint-dir", str(ckpt), "--checkpoint-interval", "10")
    common += BATCH

    first = launch("--nproc", "2", *common, "--script", SCRIPT, "--max-steps", "20")
    assert first.wait(120) == 0, first.tail()
    assert batch_plans(first.text()) == [(16, 4, 2, 2)]
    assert saved_step(ckpt) == 20

    second = launch("--nproc", "1", *common, "--script", SCRIPT, "--max-steps", "30")
    assert second.wait(120) == 0, second.tail()
    assert batch_plans(second.text()) == [(16, 4, 1, 4)], "accumulation doubles"
    assert starts(second.text()) == [20]
    assert [s for s, _ in steps(second.text())] == [30]
    assert saved_step(ckpt) == 30
    # One file per saved step: the resumed step is not saved again mid-accumulation.
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "last.ckpt",
        "step=10.ckpt",
        "step=20.ckpt",
        "step=30.ckpt",
    ]
