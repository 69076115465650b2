"""The Lightning and Hugging Face examples settle PT_HPU_LAZY_MODE before Intel's bridge
loads (fake habana_frameworks: `import torch` loads it, as in Intel's images), and the
Trainer asks optimum-habana for the mode the bridge was loaded in."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from training.conftest import FAKE_HABANA, clean_env
from training.frameworks import EXAMPLES

pytestmark = pytest.mark.training

# Runs an example's module level (its imports) without its main().
LOAD = "import json, runpy, sys; g = runpy.run_path(sys.argv[1], run_name='example'); "


def load(example: str, log: Path, code: str = "", **env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", LOAD + code, str(EXAMPLES / example)],
        env=clean_env(PYTHONPATH=str(FAKE_HABANA), FAKE_HABANA_LOG=str(log), **env),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def bridge_loaded_with(log: Path) -> dict[str, Any]:
    """The environment the fake bridge saw when the example's imports loaded it."""
    first = json.loads(log.read_text().splitlines()[0])
    assert (first["event"], first["module"]) == ("import", "habana_frameworks")
    return dict(first["env"])


@pytest.mark.parametrize(
    ("example", "given", "seen"),
    [
        ("lightning_regression.py", {}, "0"),  # alone: Intel's default, eager
        ("hf_trainer_tiny.py", {"PT_HPU_LAZY_MODE": "1"}, "1"),  # gaudi3-train --hpu-mode lazy
    ],
)
def test_the_example_sets_the_mode_before_torch_loads_the_bridge(
    tmp_path: Path, example: str, given: dict[str, str], seen: str
) -> None:
    log = tmp_path / "fake.jsonl"
    load(example, log, **given)
    assert bridge_loaded_with(log)["PT_HPU_LAZY_MODE"] == seen


def test_the_trainer_asks_optimum_habana_for_the_mode_the_bridge_runs(tmp_path: Path) -> None:
    log = tmp_path / "fake.jsonl"
    envs = [
        {"PT_HPU_LAZY_MODE": "0"},
        {"PT_HPU_LAZY_MODE": "1"},
        {"PT_HPU_LAZY_MODE": "0", "GAUDI3_COMPILE": "1"},
        {"PT_HPU_LAZY_MODE": "1", "GAUDI3_COMPILE": "1"},  # refused by the launcher anyway
    ]
    code = f"print(json.dumps([g['gaudi_arguments'](env) for env in {envs!r}]))"
    arguments = json.loads(load("hf_trainer_tiny.py", log, code))
    assert bridge_loaded_with(log)["PT_HPU_LAZY_MODE"] == "0"  # alone: eager
    base = {"use_habana": True, "ddp_backend": "hccl"}
    compiled = {"torch_compile": True, "torch_compile_backend": "hpu_backend"}
    assert arguments == [
        {**base, "use_lazy_mode": False},
        {**base, "use_lazy_mode": True},
        {**base, "use_lazy_mode": False, **compiled},
        {**base, "use_lazy_mode": True},
    ]
