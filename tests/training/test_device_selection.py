"""Device and backend choice, HPU > CUDA > CPU, with habana_frameworks faked."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from gaudi_train import device
from gaudi_train.device import select_device

pytestmark = pytest.mark.unit


class FakeHabana:
    """Fake `habana_frameworks.torch` modules, recording the calls the launcher makes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, available: bool = True) -> None:
        self.mark_steps = 0
        root = types.ModuleType("habana_frameworks")
        ht = types.ModuleType("habana_frameworks.torch")
        hpu = types.ModuleType("habana_frameworks.torch.hpu")
        hpu.is_available = lambda: available  # type: ignore[attr-defined]
        hpu.device_count = lambda: 8  # type: ignore[attr-defined]
        core = types.ModuleType("habana_frameworks.torch.core")
        core.mark_step = self._mark_step  # type: ignore[attr-defined]
        dist = types.ModuleType("habana_frameworks.torch.distributed")
        hccl = types.ModuleType("habana_frameworks.torch.distributed.hccl")
        for module in (root, ht, hpu, core, dist, hccl):
            monkeypatch.setitem(sys.modules, module.__name__, module)

    def _mark_step(self) -> None:
        self.mark_steps += 1


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: None)


@pytest.fixture
def no_habana(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes `import habana_frameworks` raise ImportError.
    monkeypatch.setitem(sys.modules, "habana_frameworks", None)


def test_cpu_with_gloo_when_no_accelerator_is_present(no_habana: None, no_cuda: None) -> None:
    chosen = select_device("auto", env={})
    assert (chosen.kind, chosen.device, chosen.backend) == ("cpu", "cpu", "gloo")
    assert chosen.autocast_dtype is None and not chosen.lazy_mode


def test_hpu_with_hccl_when_habana_frameworks_sees_a_gaudi(
    monkeypatch: pytest.MonkeyPatch, fake_cuda: None
) -> None:
    FakeHabana(monkeypatch)
    chosen = select_device("auto", env={})
    assert (chosen.kind, chosen.device, chosen.backend) == ("hpu", "hpu", "hccl")
    assert chosen.autocast_dtype == "bfloat16"
    assert not chosen.lazy_mode  # eager by default; lazy only with PT_HPU_LAZY_MODE=1


def test_hpu_lazy_mode_calls_mark_step(monkeypatch: pytest.MonkeyPatch, no_cuda: None) -> None:
    fake = FakeHabana(monkeypatch)
    chosen = select_device("auto", env={"PT_HPU_LAZY_MODE": "1"})
    assert chosen.lazy_mode
    chosen.mark_step()
    assert fake.mark_steps == 1


def test_cuda_with_nccl_when_habana_frameworks_is_absent(no_habana: None, fake_cuda: None) -> None:
    chosen = select_device("auto", local_rank=3, env={})
    assert (chosen.kind, chosen.device, chosen.backend) == ("cuda", "cuda:3", "nccl")


def test_installed_habana_without_a_device_falls_back(
    monkeypatch: pytest.MonkeyPatch, no_cuda: None
) -> None:
    FakeHabana(monkeypatch, available=False)
    assert select_device("auto", env={}).kind == "cpu"


def test_forcing_cpu_skips_present_accelerators(
    monkeypatch: pytest.MonkeyPatch, fake_cuda: None
) -> None:
    FakeHabana(monkeypatch)
    assert select_device("cpu", env={}).backend == "gloo"


def test_forcing_a_missing_device_is_an_error(no_habana: None, no_cuda: None) -> None:
    with pytest.raises(RuntimeError, match="habana_frameworks is missing"):
        select_device("hpu", env={})
    with pytest.raises(RuntimeError, match="no CUDA device"):
        select_device("cuda", env={})


def test_one_process_per_device(monkeypatch: pytest.MonkeyPatch, no_cuda: None) -> None:
    from gaudi_train.launcher import device_count

    assert device_count() == 1
    FakeHabana(monkeypatch)
    assert device_count() == 8


def test_device_module_does_not_import_habana_at_import_time() -> None:
    assert "habana_frameworks" not in vars(device)
