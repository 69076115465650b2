"""Fake `habana_frameworks.torch.hpu.random`: one generator state per process.

The state starts from the process id, so every process (and every restart) starts
with a different one; a test can then tell a restored state from a fresh one.
"""

from __future__ import annotations

import os

import torch

from habana_frameworks import _fake

_fake.record("import", module=__name__, env=_fake.environment())

_state = torch.tensor(list(os.getpid().to_bytes(8, "little")) * 2, dtype=torch.uint8)


def get_rng_state(device: object = None) -> torch.Tensor:
    _fake.record("get_rng_state", state=_state.tolist())
    return _state.clone()


def set_rng_state(new_state: torch.Tensor, device: object = None) -> None:
    global _state
    _state = torch.as_tensor(new_state, dtype=torch.uint8).clone()
    _fake.record("set_rng_state", state=_state.tolist())


def manual_seed(seed: int) -> None:
    global _state
    _state = torch.tensor(list((seed % 2**64).to_bytes(8, "little")) * 2, dtype=torch.uint8)
    _fake.record("manual_seed", seed=seed)
