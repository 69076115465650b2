"""Constant global batch: accumulation from world size, and the valid world sizes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gaudi_train.batching import (
    BatchConfigError,
    accumulation_steps,
    plan,
    valid_replica_counts,
    valid_world_sizes,
)

pytestmark = pytest.mark.unit


def test_accumulation_keeps_the_global_batch_constant_across_world_sizes() -> None:
    for world, accumulation in [(1, 32), (2, 16), (4, 8), (8, 4), (32, 1)]:
        assert accumulation_steps(1024, 32, world) == accumulation
        assert 32 * world * accumulation == 1024


def test_valid_world_sizes_divide_global_by_micro() -> None:
    assert valid_world_sizes(1024, 8, 64) == [1, 2, 4, 8, 16, 32, 64]
    assert valid_world_sizes(96, 4, 16) == [1, 2, 3, 4, 6, 8, 12]
    assert valid_world_sizes(10, 4, 8) == []


def test_valid_replica_counts_use_processes_per_pod() -> None:
    # 8 HPUs per pod: worlds 8, 16, 32 ... divide 256 / 8 = 32 micro batches per step.
    assert valid_replica_counts(256, 8, 8, 1, 8) == [1, 2, 4]
    assert valid_replica_counts(256, 8, 8, 3, 8) == [4]


def test_impossible_combination_names_the_valid_world_sizes() -> None:
    with pytest.raises(BatchConfigError) as err:
        accumulation_steps(16, 4, 3)
    message = str(err.value)
    assert "world of 3 processes" in message
    assert "valid world sizes are: 1, 2, 4" in message


def test_global_batch_must_be_a_multiple_of_the_micro_batch() -> None:
    with pytest.raises(BatchConfigError, match="not a multiple of the micro batch size 4"):
        accumulation_steps(10, 4, 1)


def test_without_a_global_batch_each_process_takes_one_micro_batch() -> None:
    assert plan(None, 8, 4).global_batch == 32
    assert plan(None, 8, 4).accumulation_steps == 1


def test_batching_imports_without_torch() -> None:
    # The operator's autoscaler imports this module; its image has no torch.
    code = "import sys, gaudi_train.batching; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
