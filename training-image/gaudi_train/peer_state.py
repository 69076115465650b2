"""State from a surviving replica: a new world takes model and optimizer from a peer.

In a data-parallel world every rank holds the whole model and optimizer state, equal on
all ranks after every step. When a world breaks and re-forms in place, the ranks that
survived still hold it at the last step they completed; a restarted or new rank holds
nothing. The first collectives of the new world:

1. `agree_source`: the newest step any rank holds valid state for (all-reduce MAX), and
   the lowest rank holding it (all-reduce MIN) is the source.
2. `broadcast_state`: the source broadcasts the shape of its state (FQNs, shapes, dtypes,
   and the non-tensor values such as the optimizer's hyper-parameters) and every rank
   checks that its own model and optimizer have the same tensors. If any rank differs
   (another model, or a world whose shards differ) nobody takes the peer's state and the
   caller falls back to the checkpoint. Otherwise the tensors are broadcast in one flat
   buffer per dtype and device and loaded with `set_state_dict`.

Two all-reduces of one number, one small object broadcast and one broadcast per dtype:
no file is read, no step is redone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

from gaudi_train.checkpoint import _state

log = logging.getLogger(__name__)

Path = tuple[Any, ...]


@dataclass(frozen=True)
class TensorSpec:
    """Where a tensor sits in the state and what it is; what the source sends in its place."""

    index: int
    shape: tuple[int, ...]
    dtype: str


def _leaves(obj: Any, path: Path = ()) -> Iterator[tuple[Path, torch.Tensor]]:
    """Every tensor of a nested state dict, in a fixed order (keys sorted)."""
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, Mapping):
        for key in sorted(obj, key=str):
            yield from _leaves(obj[key], (*path, key))
    elif isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            yield from _leaves(value, (*path, i))


def _skeleton(obj: Any, index: dict[int, int]) -> Any:
    """`obj` with each tensor replaced by its TensorSpec (pickled to the receivers)."""
    if isinstance(obj, torch.Tensor):
        return TensorSpec(index[id(obj)], tuple(obj.shape), str(obj.dtype))
    if isinstance(obj, Mapping):
        return {k: _skeleton(v, index) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_skeleton(v, index) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_skeleton(v, index) for v in obj)
    return obj


def _fill(skeleton: Any, tensors: list[torch.Tensor]) -> Any:
    """The source's structure with this rank's (now equal) tensors in it."""
    if isinstance(skeleton, TensorSpec):
        return tensors[skeleton.index]
    if isinstance(skeleton, Mapping):
        return {k: _fill(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [_fill(v, tensors) for v in skeleton]
    if isinstance(skeleton, tuple):
        return tuple(_fill(v, tensors) for v in skeleton)
    return skeleton


def _all_reduce_int(value: int, op: Any, device: torch.device) -> int:
    box = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(box, op=op)
    return int(box.cpu()[0])


def agree_source(step: int | None, rank: int, device: torch.device) -> tuple[int, int | None]:
    """(newest step with valid state anywhere, lowest rank holding it); (-1, None) when no
    rank holds any. `step` is this rank's, or None when it holds nothing valid."""
    mine = -1 if step is None else step
    if not (dist.is_available() and dist.is_initialized()):
        return (mine, rank) if mine >= 0 else (-1, None)
    best = _all_reduce_int(mine, dist.ReduceOp.MAX, device)
    if best < 0:
        return -1, None
    world = dist.get_world_size()
    holder = rank if mine == best else world
    return best, _all_reduce_int(holder, dist.ReduceOp.MIN, device)


def broadcast_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    src: int,
    meta: dict[str, Any] | None,
    device: torch.device,
) -> dict[str, Any] | None:
    """Collective: make every rank's model and optimizer equal to rank `src`'s.

    Returns the source's `meta` (step, batch, user values), or None on every rank when
    some rank's state has other tensors than the source's (then nothing was changed)."""
    rank = dist.get_rank()
    state = _state(model, optimizer)
    leaves = list(_leaves(state))
    tensors = [t for _, t in leaves]
    specs = [(path, tuple(t.shape), str(t.dtype)) for path, t in leaves]
    box: list[Any] = [None]
    if rank == src:
        index = {id(t): i for i, t in enumerate(tensors)}
        box = [{"meta": meta, "skeleton": _skeleton(state, index), "specs": specs}]
    dist.broadcast_object_list(box, src=src)
    offer = box[0]
    same = 1 if offer["specs"] == specs else 0
    if _all_reduce_int(same, dist.ReduceOp.MIN, device) == 0:
        if not same:
            log.warning("this rank's model or optimizer differs from rank %d's: no peer state", src)
        return None
    # One flat buffer per (dtype, device): a few broadcasts, not one per tensor.
    groups: dict[tuple[torch.dtype, torch.device], list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.dtype, t.device), []).append(i)
    gloo = dist.get_backend() == "gloo"
    for (dtype, where), members in groups.items():
        parts = [tensors[i] for i in members]
        if rank == src:
            flat = torch.cat([p.detach().reshape(-1) for p in parts])
        else:
            flat = torch.empty(sum(p.numel() for p in parts), dtype=dtype, device=where)
        # hccl and nccl broadcast device tensors; optimizer step counters live on the CPU.
        wire = flat if gloo else flat.to(device)
        dist.broadcast(wire, src=src)
        if rank != src:
            flat = wire.to(where)
            offset = 0
            for p in parts:
                n = p.numel()
                with torch.no_grad():
                    p.copy_(flat[offset : offset + n].view_as(p))
                offset += n
    if rank != src:
        loaded = _fill(offer["skeleton"], tensors)
        if optimizer is None:
            set_model_state_dict(model, loaded["model"])
        else:
            set_state_dict(
                model,
                optimizer,
                model_state_dict=loaded["model"],
                optim_state_dict=loaded["optim"],
            )
    result: dict[str, Any] | None = offer["meta"]
    return result
