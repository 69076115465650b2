"""The built-in workload on the HPU branch, for the fake-bridge tests (run with --script).

There is no HPU here, so the DeviceInfo that `select_device` returns on the HPU branch
keeps everything (kind "hpu", backend hccl, lazy mode and mark_step, hpu_backend, Intel's
DDP arguments, HPU RNG in checkpoints) except its device string, which becomes "cpu", and
bf16 autocast, which is turned off: the tensors stay on the CPU. Everything else is the
code an HPU worker runs, against tests/training/fake_habana.

It also writes backward, optimizer.step and the DDP wrapper's settings into the fake's log,
so the tests can see where mark_step() falls and what DDP got.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import torch
from habana_frameworks import _fake  # type: ignore[import-not-found]
from torch.nn.parallel import DistributedDataParallel
from torch.optim.optimizer import register_optimizer_step_post_hook

from gaudi_train import session as session_module
from gaudi_train import worker
from gaudi_train.device import DeviceInfo, uncompiled

select_device = session_module.select_device


def select_on_cpu(*args: Any, **kwargs: Any) -> DeviceInfo:
    info = select_device(*args, **kwargs)
    if info.kind != "hpu":
        raise SystemExit(f"hpu_probe: expected the HPU branch, got {info.kind}")
    return dataclasses.replace(info, device="cpu", autocast_dtype=None)


wrap = session_module.Session.wrap


def recorded_wrap(self: Any, model: torch.nn.Module) -> torch.nn.Module:
    wrapped = wrap(self, model)
    inner = uncompiled(wrapped)
    _fake.record("wrapped", compiled=inner is not wrapped, ddp=isinstance(inner, DDP))
    if isinstance(inner, DDP):
        _fake.record(
            "ddp",
            bucket_bytes_cap=inner.bucket_bytes_cap,
            # newer torch keeps broadcast_buffers as forward_sync_buffers
            broadcast_buffers=getattr(
                inner, "broadcast_buffers", getattr(inner, "forward_sync_buffers", None)
            ),
            gradient_as_bucket_view=inner.gradient_as_bucket_view,
            device_ids=inner.device_ids,
        )
    return wrapped


backward = torch.Tensor.backward


def recorded_backward(self: torch.Tensor, *args: Any, **kwargs: Any) -> None:
    backward(self, *args, **kwargs)
    _fake.record("backward")


DDP = DistributedDataParallel
session_module.select_device = select_on_cpu  # type: ignore[assignment]
session_module.Session.wrap = recorded_wrap  # type: ignore[method-assign]
torch.Tensor.backward = recorded_backward  # type: ignore[method-assign]
register_optimizer_step_post_hook(lambda optimizer, args, kwargs: _fake.record("optimizer.step"))

if __name__ == "__main__":
    sys.exit(worker.main(sys.argv[1:]))
