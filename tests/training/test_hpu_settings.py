"""The HPU path's settings: the execution mode set once before the bridge loads, Intel's
DDP arguments, the compile backend, and a writable HABANA_LOGS (fake bridge, no Gaudi)."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import pytest

from gaudi_train import hpu_mode
from gaudi_train.cli import build_parser, settings_from
from gaudi_train.device import DeviceInfo, select_device
from gaudi_train.env import EnvError, JobSettings
from gaudi_train.launcher import habana_logs_problem, settings_problem

pytestmark = pytest.mark.unit


def events(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


# -- eager or lazy ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("requested", "env", "mode"),
    [
        (None, {}, "eager"),  # Intel's default
        (None, {"PT_HPU_LAZY_MODE": "1"}, "lazy"),  # set in the pod template
        (None, {"PT_HPU_LAZY_MODE": "0"}, "eager"),
        ("lazy", {"PT_HPU_LAZY_MODE": "0"}, "lazy"),  # the flag wins
        ("EAGER", {"PT_HPU_LAZY_MODE": "1"}, "eager"),
    ],
)
def test_the_mode_comes_from_the_flag_then_the_environment_then_intels_default(
    requested: str | None, env: dict[str, str], mode: str
) -> None:
    assert hpu_mode.resolve(requested, env) == mode


def test_bad_mode_values_are_named() -> None:
    with pytest.raises(hpu_mode.ModeError, match="GAUDI3_HPU_MODE='graph': use eager or lazy"):
        hpu_mode.resolve("graph", {})
    # 2 was eager in Intel's old docs; today 0 is eager and 1 lazy.
    with pytest.raises(EnvError, match=r"PT_HPU_LAZY_MODE='2': use 0 \(eager"):
        JobSettings.from_env({"PT_HPU_LAZY_MODE": "2"})


def test_apply_writes_pt_hpu_lazy_mode_while_the_bridge_is_not_loaded() -> None:
    env: dict[str, str] = {}
    assert hpu_mode.apply("lazy", env, modules={}) == "lazy"
    assert env == {"PT_HPU_LAZY_MODE": "1"}
    hpu_mode.apply("eager", env, modules={"torch": object()})
    assert env == {"PT_HPU_LAZY_MODE": "0"}


def test_apply_refuses_to_change_the_mode_after_the_bridge_loaded(fake_habana: Path) -> None:
    env = {"PT_HPU_LAZY_MODE": "0"}
    importlib.import_module("habana_frameworks.torch")
    assert hpu_mode.bridge_loaded()
    with pytest.raises(hpu_mode.ModeError, match="must be set before habana_frameworks is"):
        hpu_mode.apply("lazy", env)
    assert env == {"PT_HPU_LAZY_MODE": "0"}
    assert hpu_mode.apply("eager", env) == "eager"  # what it already is: fine


def test_job_settings_carry_mode_and_compile_to_the_workers() -> None:
    settings = JobSettings.from_env({"GAUDI3_HPU_MODE": "lazy", "GAUDI3_COMPILE": "1"})
    assert (settings.hpu_mode, settings.compile) == ("lazy", True)
    assert JobSettings.from_env(settings.to_env()) == settings
    assert (JobSettings.from_env({}).hpu_mode, JobSettings.from_env({}).compile) == (
        "eager",
        False,
    )
    with pytest.raises(EnvError, match="GAUDI3_COMPILE='maybe'"):
        JobSettings.from_env({"GAUDI3_COMPILE": "maybe"})


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GAUDI3_HPU_MODE", "lazy")
    monkeypatch.delenv("GAUDI3_COMPILE", raising=False)
    args = build_parser().parse_args(["--hpu-mode", "eager", "--compile"])
    assert (settings_from(args).hpu_mode, settings_from(args).compile) == ("eager", True)
    unset = settings_from(build_parser().parse_args([]))
    assert (unset.hpu_mode, unset.compile) == ("lazy", False)


def test_compile_in_lazy_mode_is_refused() -> None:
    problem = settings_problem(JobSettings(hpu_mode="lazy", compile=True))
    assert problem is not None and "needs eager mode" in problem
    assert settings_problem(JobSettings(hpu_mode="eager", compile=True)) is None
    with pytest.raises(hpu_mode.ModeError, match="needs eager mode"):
        DeviceInfo("hpu", "hpu", "hccl", lazy_mode=True).compiled(object())


# -- the bridge as the workers see it ---------------------------------------------------------
@pytest.mark.parametrize(("value", "lazy", "steps"), [("1", True, 1), ("0", False, 0)])
def test_mark_step_is_intels_only_in_lazy_mode(
    fake_habana: Path, value: str, lazy: bool, steps: int
) -> None:
    info = select_device("hpu", env={"PT_HPU_LAZY_MODE": value})
    assert (info.kind, info.backend, info.lazy_mode) == ("hpu", "hccl", lazy)
    info.mark_step()
    assert [e["event"] for e in events(fake_habana)].count("mark_step") == steps
    imported = {e["module"] for e in events(fake_habana) if e["event"] == "import"}
    assert "habana_frameworks.torch.distributed.hccl" in imported  # registers hccl


def test_ddp_gets_intels_arguments_on_hpu_and_torchs_defaults_elsewhere() -> None:
    hpu = DeviceInfo("hpu", "hpu", "hccl")
    assert hpu.ddp_arguments(3) == {
        "bucket_cap_mb": 256,
        "broadcast_buffers": False,
        "gradient_as_bucket_view": True,
    }
    assert DeviceInfo("cuda", "cuda:3", "nccl").ddp_arguments(3) == {"device_ids": [3]}
    assert DeviceInfo("cpu", "cpu", "gloo").ddp_arguments(0) == {}


def test_each_device_has_its_compile_backend(fake_habana: Path) -> None:
    assert select_device("hpu", env={}).compile_backend == "hpu_backend"
    assert select_device("cpu", env={}).compile_backend == "aot_eager"


# -- HABANA_LOGS -------------------------------------------------------------------------------
def test_habana_logs_must_be_writable(tmp_path: Path) -> None:
    assert habana_logs_problem({}) is None  # not an Intel image: nothing to check
    logs = tmp_path / "var" / "log" / "habana_logs"
    assert habana_logs_problem({"HABANA_LOGS": f"{logs}/"}) is None
    assert logs.is_dir() and not list(logs.iterdir())  # created, probe file removed
    blocker = tmp_path / "file"
    blocker.write_text("")
    problem = habana_logs_problem({"HABANA_LOGS": str(blocker)})
    assert problem is not None
    assert problem.startswith(f"HABANA_LOGS={blocker} is not writable for uid {os.getuid()}")
    assert "emptyDir" in problem
