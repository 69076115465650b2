"""Checkpoints become visible atomically; partial ones are never loaded."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

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


# -- the HPU's RNG (fake habana_frameworks) and compiled models --------------------------------
def hpu_random() -> Any:
    return importlib.import_module("habana_frameworks.torch.hpu.random")


def calls(log: Path, event: str) -> list[dict[str, Any]]:
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    return [e for e in entries if e["event"] == event]


def test_the_hpu_rng_state_is_saved_and_restored(tmp_path: Path, fake_habana: Path) -> None:
    model, optimizer = make()
    hpu_random().manual_seed(1234)
    saved = hpu_random().get_rng_state().tolist()
    Checkpointer(tmp_path / "ckpt", device_kind="hpu").save(7, model, optimizer)
    rng = torch.load(tmp_path / "ckpt" / "step-00000007" / "rng-rank0.pt", weights_only=False)
    assert rng["hpu"].tolist() == saved and {"torch", "python"} <= set(rng)

    hpu_random().manual_seed(99)  # the generator moves on (or a new process starts)
    loader = Checkpointer(tmp_path / "ckpt", device_kind="hpu")
    loader.load(latest_checkpoint(tmp_path / "ckpt"), model, optimizer)
    assert [c["state"] for c in calls(fake_habana, "set_rng_state")] == [saved]
    assert hpu_random().get_rng_state().tolist() == saved


def test_a_checkpoint_without_an_hpu_rng_state_still_loads_on_hpu(
    tmp_path: Path, fake_habana: Path
) -> None:
    # Written by the launcher before HPU states were saved (the same format as on CPU now).
    model, optimizer = make()
    Checkpointer(tmp_path, seed=5).save(3, model, optimizer)
    rng = torch.load(tmp_path / "step-00000003" / "rng-rank0.pt", weights_only=False)
    assert "hpu" not in rng

    fresh = torch.nn.Linear(3, 2)
    Checkpointer(tmp_path, seed=5, device_kind="hpu").load(latest_checkpoint(tmp_path), fresh)
    assert torch.equal(fresh.weight, model.weight)
    assert not calls(fake_habana, "set_rng_state")
    assert len(calls(fake_habana, "manual_seed")) == 1  # reseeded, deterministically


def test_an_hpu_checkpoint_loads_on_cpu(tmp_path: Path, fake_habana: Path) -> None:
    model, optimizer = make()
    Checkpointer(tmp_path, device_kind="hpu").save(4, model, optimizer)
    fresh = torch.nn.Linear(3, 2)
    Checkpointer(tmp_path).load(latest_checkpoint(tmp_path), fresh)  # device_kind cpu
    assert torch.equal(fresh.weight, model.weight)
    assert not calls(fake_habana, "set_rng_state")


def test_compiled_and_plain_models_share_checkpoints(tmp_path: Path) -> None:
    model, optimizer = make()
    compiled = torch.compile(model, backend="aot_eager")
    compiled(torch.ones(1, 3)).sum().backward()
    Checkpointer(tmp_path).save(1, compiled, optimizer)

    plain = torch.nn.Linear(3, 2)
    Checkpointer(tmp_path).load(latest_checkpoint(tmp_path), plain)
    assert torch.equal(plain.weight, model.weight)
    again = torch.compile(torch.nn.Linear(3, 2), backend="aot_eager")
    Checkpointer(tmp_path).load(latest_checkpoint(tmp_path), again)
    assert torch.equal(again._orig_mod.weight, model.weight)
