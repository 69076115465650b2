"""Pick the accelerator and the matching collective backend: HPU > CUDA > CPU.

The HPU path follows Intel's documented Gaudi PyTorch API (`habana_frameworks.torch`,
`torch.device("hpu")`, the `hccl` backend, `mark_step()` in lazy mode, DDP arguments and
`torch.compile(backend="hpu_backend")` as Intel's Model-References use them). It was
written from that documentation, is tested against a fake `habana_frameworks`
(tests/training/fake_habana) and has not been run on Gaudi hardware in this repository.
`habana_frameworks` exists only in Intel's images, so it is imported lazily here.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from gaudi_train import hpu_mode

log = logging.getLogger(__name__)

KINDS = ("hpu", "cuda", "cpu")

# torch.compile backends. HPU: Intel's "hpu_backend", eager mode only (PyTorch Support
# Matrix; Model-References train.py: torch.compile(model, backend="hpu_backend")). CUDA:
# torch's default. CPU: "aot_eager", the TorchDynamo + AOTAutograd front end without
# code generation, so `--compile` traces the model on a CPU test run as it would on an
# HPU, without a C++ toolchain in the image and without pretending to speed it up.
HPU_COMPILE_BACKEND = "hpu_backend"
CUDA_COMPILE_BACKEND = "inductor"
CPU_COMPILE_BACKEND = "aot_eager"

# DDP as Intel's reference runs it on HPUs: Model-References
# PyTorch/computer_vision/classification/torchvision/train.py (bucket_cap_mb=256,
# broadcast_buffers=False, gradient_as_bucket_view=True); its hello_world mnist.py passes
# the same two flags with bucket_cap_mb=100. CPU and CUDA keep torch's defaults.
HPU_DDP_ARGUMENTS: dict[str, Any] = {
    "bucket_cap_mb": 256,
    "broadcast_buffers": False,
    "gradient_as_bucket_view": True,
}


@dataclass(frozen=True)
class DeviceInfo:
    """Where tensors live and how processes talk: kind, torch device string, backend."""

    kind: str  # "hpu", "cuda" or "cpu"
    device: str  # e.g. "hpu", "cuda:1", "cpu"
    backend: str  # "hccl", "nccl" or "gloo"
    lazy_mode: bool = False  # HPU lazy mode: mark_step() flushes the accumulated graph
    autocast_dtype: str | None = None  # "bfloat16" where the device does it well
    # Called after backward and after optimizer.step(); a no-op except in HPU lazy mode.
    mark_step: Callable[[], None] = field(default=lambda: None, compare=False, repr=False)
    compile_backend: str = CPU_COMPILE_BACKEND  # what `--compile` hands torch.compile

    def torch_device(self) -> Any:
        import torch

        return torch.device(self.device)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast on HPU and capable CUDA devices, nothing on CPU."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        import torch

        return torch.autocast(device_type=self.kind, dtype=getattr(torch, self.autocast_dtype))

    def compiled(self, model: Any) -> Any:
        """`torch.compile(model)` with this device's backend (hpu_backend on Gaudi)."""
        if self.lazy_mode:
            raise hpu_mode.ModeError(
                "--compile needs eager mode: torch.compile(backend='hpu_backend') is not "
                "supported in lazy mode (Intel's PyTorch Support Matrix); drop --compile "
                "or use --hpu-mode eager"
            )
        import torch

        log.info("torch.compile(backend=%r)", self.compile_backend)
        return torch.compile(model, backend=self.compile_backend)

    def ddp_arguments(self, local_rank: int) -> dict[str, Any]:
        """DistributedDataParallel's keyword arguments for this device."""
        if self.kind == "hpu":
            return dict(HPU_DDP_ARGUMENTS)
        if self.kind == "cuda":
            return {"device_ids": [local_rank]}
        return {}


def uncompiled(model: Any) -> Any:
    """The module torch.compile wrapped (e.g. the DDP wrapper), or `model` itself."""
    inner = getattr(model, "_orig_mod", None)
    return model if inner is None else inner


def _import_optional(name: str) -> ModuleType | None:
    """Import `name`, or None when it (or something it needs) is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def hpu_available() -> bool:
    """True when Intel's Gaudi PyTorch bridge is installed and sees a device."""
    if _import_optional("habana_frameworks") is None:
        return False
    # Importing habana_frameworks.torch registers the "hpu" device with torch.
    if _import_optional("habana_frameworks.torch") is None:
        return False
    hpu = _import_optional("habana_frameworks.torch.hpu")
    if hpu is None:
        return False
    try:
        return bool(hpu.is_available())
    except Exception as exc:  # a broken driver must not kill the CPU fallback
        log.warning("habana_frameworks is installed but reports an error: %s", exc)
        return False


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def select_device(
    prefer: str = "auto", local_rank: int = 0, env: dict[str, str] | None = None
) -> DeviceInfo:
    """The device for this process; `prefer` forces one kind ("auto" picks the best)."""
    env = dict(os.environ) if env is None else env
    prefer = prefer.lower()
    if prefer not in ("auto", *KINDS):
        raise ValueError(f"device {prefer!r}: use auto, hpu, cuda or cpu")
    if prefer in ("auto", "hpu") and hpu_available():
        return _hpu_device(env)
    if prefer == "hpu":
        raise RuntimeError(
            "device hpu requested but habana_frameworks is missing or sees no Gaudi device"
        )
    if prefer in ("auto", "cuda") and cuda_available():
        import torch

        torch.cuda.set_device(local_rank)
        bf16 = bool(torch.cuda.is_bf16_supported())
        return DeviceInfo(
            "cuda",
            f"cuda:{local_rank}",
            "nccl",
            autocast_dtype="bfloat16" if bf16 else None,
            compile_backend=CUDA_COMPILE_BACKEND,
        )
    if prefer == "cuda":
        raise RuntimeError("device cuda requested but torch sees no CUDA device")
    return DeviceInfo("cpu", "cpu", "gloo")


def _hpu_device(env: dict[str, str]) -> DeviceInfo:
    # Intel: importing this module registers the "hccl" process-group backend; it reads
    # the torchrun variables (LOCAL_RANK ...) to map each process to its own Gaudi.
    importlib.import_module("habana_frameworks.torch.distributed.hccl")
    # htcore: mark_step, and what Intel's examples import in both modes before
    # torch.compile(backend="hpu_backend") (Getting Started with Training on Intel Gaudi).
    core = importlib.import_module("habana_frameworks.torch.core")
    # The bridge read PT_HPU_LAZY_MODE when it loaded (with `import torch`); the launcher
    # set it before that (gaudi_train.hpu_mode), so reading it here tells the mode.
    lazy = hpu_mode.current(env) == hpu_mode.LAZY
    # Intel: mark_step() only in lazy mode, after backward and after optimizer.step().
    mark_step: Callable[[], None] = core.mark_step if lazy else (lambda: None)
    return DeviceInfo("hpu", "hpu", "hccl", lazy, "bfloat16", mark_step, HPU_COMPILE_BACKEND)
