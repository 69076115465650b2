"""Constant global batch size across resizes.

Pure arithmetic with no torch import: the operator's autoscaler imports this module to
pick only world sizes that keep the global batch size unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass


class BatchConfigError(ValueError):
    """The global batch cannot be split over this world size; the message says why."""


@dataclass(frozen=True)
class BatchPlan:
    """How one optimizer step is split over the world."""

    global_batch: int
    micro_batch: int
    world_size: int
    accumulation_steps: int


def valid_world_sizes(global_batch: int, micro_batch: int, max_world: int) -> list[int]:
    """World sizes in 1..max_world for which global = micro * world * accumulation."""
    _check_positive(global_batch=global_batch, micro_batch=micro_batch)
    if global_batch % micro_batch:
        return []
    return [w for w in range(1, max_world + 1) if global_batch % (micro_batch * w) == 0]


def valid_replica_counts(
    global_batch: int,
    micro_batch: int,
    procs_per_worker: int,
    min_replicas: int,
    max_replicas: int,
) -> list[int]:
    """Worker-pod counts in [min, max] whose world (pods * procs) keeps the global batch."""
    sizes = set(valid_world_sizes(global_batch, micro_batch, max_replicas * procs_per_worker))
    return [
        r for r in range(max(min_replicas, 1), max_replicas + 1) if r * procs_per_worker in sizes
    ]


def accumulation_steps(global_batch: int, micro_batch: int, world_size: int) -> int:
    """Gradient-accumulation steps so that the global batch stays `global_batch`.

    Raises BatchConfigError naming the valid world sizes when there is no exact split.
    """
    _check_positive(global_batch=global_batch, micro_batch=micro_batch, world_size=world_size)
    per_step = micro_batch * world_size
    if global_batch % per_step == 0:
        return global_batch // per_step
    # No world larger than global / micro can take even one micro batch per process.
    valid = valid_world_sizes(global_batch, micro_batch, global_batch // micro_batch)
    if global_batch % micro_batch:
        hint = (
            f"the global batch size {global_batch} is not a multiple of the micro batch "
            f"size {micro_batch}: choose a micro batch size that divides it"
        )
    else:
        shown = ", ".join(str(w) for w in valid)
        hint = f"valid world sizes are: {shown}"
    raise BatchConfigError(
        f"global batch size {global_batch} cannot be split into micro batches of "
        f"{micro_batch} over a world of {world_size} processes "
        f"({global_batch} is not a multiple of {micro_batch} x {world_size} = {per_step}); "
        f"{hint}"
    )


def plan(global_batch: int | None, micro_batch: int, world_size: int) -> BatchPlan:
    """The batch plan; without a global batch size, one micro batch per process and step."""
    if global_batch is None:
        global_batch = micro_batch * world_size
    steps = accumulation_steps(global_batch, micro_batch, world_size)
    return BatchPlan(global_batch, micro_batch, world_size, steps)


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise BatchConfigError(f"{name.replace('_', ' ')} must be at least 1, got {value}")
