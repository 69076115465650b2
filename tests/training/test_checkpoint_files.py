"""Checkpoints become visible atomically; partial ones are never loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gaudi_train.checkpoint import MARKER, Checkpointer, latest_checkpoint

pytestmark = pytest.mark.training


def make() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    return model, optimizer


def test_partial_checkpoints_are_ignored_and_cleaned(tmp_path: Path) -> None:
    model, optimizer = make()
    saver = Checkpointer(tmp_path, keep=2)
    saver.save(10, model, optimizer, {"global_batch": 8})
    # A writer killed mid-save leaves a temp dir; a dir without marker is not complete.
    (tmp_path / ".tmp-step-00000020").mkdir()
    (tmp_path / ".tmp-step-00000020" / "__0_0.distcp").write_bytes(b"half")
    unmarked = tmp_path / "step-00000030"
    unmarked.mkdir()
    (unmarked / ".metadata").write_bytes(b"")

    latest = latest_checkpoint(tmp_path)
    assert latest is not None and latest.step == 10
    assert latest.extra == {"global_batch": 8}

    saver.clean_partial()
    assert not (tmp_path / ".tmp-step-00000020").exists()


def test_restore_brings_back_model_and_optimizer(tmp_path: Path) -> None:
    model, optimizer = make()
    Checkpointer(tmp_path).save(5, model, optimizer)
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    fresh = torch.nn.Linear(3, 2)
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    loader = Checkpointer(tmp_path)
    info = latest_checkpoint(tmp_path)
    loader.load(info, fresh, fresh_optimizer)
    for name, tensor in fresh.state_dict().items():
        assert torch.equal(tensor, expected[name])
    state = fresh_optimizer.state_dict()["state"]
    assert int(state[0]["step"]) == 1 and state[0]["exp_avg"].abs().sum() > 0
    assert loader.last_saved_step == 5


def test_only_the_newest_checkpoints_are_kept(tmp_path: Path) -> None:
    model, optimizer = make()
    saver = Checkpointer(tmp_path, keep=2)
    for step in (1, 2, 3):
        saver.save(step, model, optimizer)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000002", "step-00000003"]
    marker = json.loads((tmp_path / "step-00000003" / MARKER).read_text())
    assert marker["step"] == 3 and marker["world_size"] == 1
