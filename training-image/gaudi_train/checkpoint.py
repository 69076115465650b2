"""Atomic, resumable checkpoints with torch.distributed.checkpoint (DCP).

Layout under the checkpoint directory:

    step-00000040/            a complete checkpoint (DCP files, per-rank RNG, marker)
        .metadata, __0_0.distcp, ...
        rng-rank0.pt ...
        COMPLETE.json         written last, inside the temp dir, before the rename
    .tmp-step-00000060/       being written; never loaded, removed on the next start

A checkpoint becomes visible only by renaming its finished temp directory, and it is
used only if it holds the completion marker, so a crash or SIGKILL mid-write leaves
the previous checkpoint as the latest one. DCP stores each tensor with its global
shape, so a checkpoint written by N processes loads into M processes (resharding).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import logging
import os
import random
import shutil
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

log = logging.getLogger(__name__)

MARKER = "COMPLETE.json"
PREFIX = "step-"
TMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class CheckpointInfo:
    """A complete checkpoint and what its marker says."""

    path: Path
    step: int
    world_size: int
    timestamp: float
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> CheckpointInfo | None:
        """The checkpoint at `path`, or None when it is incomplete or unreadable."""
        try:
            marker = json.loads((path / MARKER).read_text())
            if not (path / ".metadata").is_file():
                return None
            return cls(
                path=path,
                step=int(marker["step"]),
                world_size=int(marker["world_size"]),
                timestamp=float(marker["timestamp"]),
                extra=dict(marker.get("extra", {})),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None


def step_dir_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def complete_checkpoints(root: Path) -> list[CheckpointInfo]:
    """Complete checkpoints under `root`, oldest first; partial ones are skipped."""
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        if child.is_dir() and child.name.startswith(PREFIX):
            info = CheckpointInfo.read(child)
            if info is not None:
                found.append(info)
    return sorted(found, key=lambda c: c.step)


def latest_checkpoint(root: Path) -> CheckpointInfo | None:
    found = complete_checkpoints(root)
    return found[-1] if found else None


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _dcp_kwargs(fn: Any) -> dict[str, Any]:
    """`no_dist` for a single process, where this torch's DCP has it (2.6 has not and
    detects a missing process group by itself)."""
    if _distributed() or "no_dist" not in inspect.signature(fn).parameters:
        return {}
    return {"no_dist": True}


def _barrier() -> None:
    if _distributed():
        dist.barrier()


def _rank() -> int:
    return dist.get_rank() if _distributed() else 0


def _world() -> int:
    return dist.get_world_size() if _distributed() else 1


def broadcast_from_rank0(value: Any) -> Any:
    """Rank 0's value on every rank, so all ranks act on the same checkpoint."""
    if not _distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _hpu_random() -> ModuleType:
    # Intel's per-device RNG API, as DeepSpeed's HPU accelerator calls it
    # (accelerator/hpu_accelerator.py) and Intel's GPU migration maps torch.cuda's onto it
    # (Model-References, gpu_migration logs: torch.cuda.get_rng_state -> hpu.random).
    return importlib.import_module("habana_frameworks.torch.hpu.random")


def rng_state(device_kind: str = "cpu") -> dict[str, Any]:
    """This process's RNG states: torch (CPU), Python, and the accelerator's own."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if device_kind == "hpu":
        # Dropout and other random ops on the HPU draw from the device's generator, not
        # torch's CPU one: without it a resumed run would not continue the same stream.
        state["hpu"] = _hpu_random().get_rng_state()
    return state


def set_rng_state(state: dict[str, Any], device_kind: str = "cpu") -> bool:
    """Restore what `rng_state` saved; False when the device's own state is missing
    (a checkpoint written before HPU states were saved, or on another device)."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if device_kind != "hpu":
        return True  # an "hpu" entry from an HPU run is ignored on other devices
    if "hpu" not in state:
        return False
    _hpu_random().set_rng_state(state["hpu"])
    return True


def _seed_value(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 1009 + rank) % (2**63)


def reseed(seed: int, step: int, rank: int, device_kind: str = "cpu") -> None:
    """Deterministic RNG for a rank that has no saved RNG state (a resized world)."""
    value = _seed_value(seed, step, rank)
    torch.manual_seed(value)
    random.seed(value)
    if device_kind == "hpu":
        _hpu_random().manual_seed(value)


class Checkpointer:
    """Saves and restores a model and optimizer; every method is collective."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        keep: int = 3,
        seed: int = 0,
        device_kind: str = "cpu",
    ) -> None:
        self.root = Path(root)
        self.keep = max(keep, 1)
        self.seed = seed
        self.device_kind = device_kind  # "hpu" also saves and restores the HPU's RNG
        self.last_saved_step: int | None = None

    def clean_partial(self) -> None:
        """Remove temp dirs left by a crash; call at start, before anyone writes."""
        if _rank() == 0 and self.root.is_dir():
            for child in self.root.iterdir():
                if child.name.startswith(TMP_PREFIX):
                    log.info("removing partial checkpoint %s", child)
                    shutil.rmtree(child, ignore_errors=True)
        _barrier()

    def latest(self) -> CheckpointInfo | None:
        """The latest complete checkpoint, as rank 0 sees it."""
        path = latest_checkpoint(self.root) if _rank() == 0 else None
        info: CheckpointInfo | None = broadcast_from_rank0(path)
        return info

    def save(
        self,
        step: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        extra: dict[str, Any] | None = None,
    ) -> CheckpointInfo:
        """Write a checkpoint of `step`; when this returns, it is complete on disk."""
        rank, world = _rank(), _world()
        final = self.root / step_dir_name(step)
        tmp = self.root / f"{TMP_PREFIX}{final.name}"
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        _barrier()
        with _single_process_ok():
            dcp.save(_state(model, optimizer), checkpoint_id=tmp, **_dcp_kwargs(dcp.save))
        torch.save(rng_state(self.device_kind), tmp / f"rng-rank{rank}.pt")
        _barrier()  # every rank's files are on disk before the marker says so
        now = time.time()
        info = CheckpointInfo(final, step, world, now, dict(extra or {}))
        if rank == 0:
            self._publish(tmp, final, info)
        _barrier()
        self.last_saved_step = step
        return info

    def _publish(self, tmp: Path, final: Path, info: CheckpointInfo) -> None:
        marker = {
            "step": info.step,
            "world_size": info.world_size,
            "timestamp": info.timestamp,
            "extra": info.extra,
        }
        with open(tmp / MARKER, "w") as f:
            json.dump(marker, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        if final.exists():  # the same step saved again (e.g. on SIGTERM right after a save)
            old = self.root / f"{TMP_PREFIX}old-{final.name}"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        _fsync_dir(self.root)
        log.info("checkpoint of step %d complete: %s", info.step, final)
        for stale in complete_checkpoints(self.root)[: -self.keep]:
            shutil.rmtree(stale.path, ignore_errors=True)

    def load(
        self,
        info: CheckpointInfo,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        """Restore model, optimizer and RNG from a complete checkpoint (any world size)."""
        state = _state(model, optimizer)
        # Fills `state` in place, resharding when the world size changed.
        with _single_process_ok():
            dcp.load(state, checkpoint_id=info.path, **_dcp_kwargs(dcp.load))
        if optimizer is None:
            set_model_state_dict(model, state["model"])
        else:
            set_state_dict(
                model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"]
            )
        rank = _rank()
        rng_file = info.path / f"rng-rank{rank}.pt"
        if info.world_size == _world() and rng_file.is_file():
            if not set_rng_state(torch.load(rng_file, weights_only=False), self.device_kind):
                # Written without an HPU state (by an older launcher, or on another
                # device): the CPU and Python streams resume, the HPU's starts afresh.
                log.info("checkpoint has no %s RNG state: reseeding it", self.device_kind)
                _hpu_random().manual_seed(_seed_value(self.seed, info.step, rank))
        else:
            # Ranks of a resized world have no RNG of their own to resume.
            reseed(self.seed, info.step, rank, self.device_kind)
        self.last_saved_step = info.step


def _state(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """DCP's view of model and optimizer: FQNs without DDP's `module.` prefix, nor
    torch.compile's `_orig_mod.` (so `--compile` reads and writes the same checkpoints)."""
    if optimizer is None:
        return {"model": get_model_state_dict(model)}
    model_sd, optim_sd = get_state_dict(model, optimizer)
    return {"model": model_sd, "optim": optim_sd}


@contextlib.contextmanager
def _single_process_ok() -> Iterator[None]:
    """DCP warns on every single-process save/load; a world of one is intended here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is .*single process")
        yield
