"""`make demo` installs only the demo's Python packages (the Makefile's venv-demo): the
operator, kubectl gtj and the dev tools, never torch (PyPI's Linux wheel brings about 4 GB
of CUDA libraries) nor the frameworks; the demo's training runs in the CPU image."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
HEAVY = ("torch", "lightning", "transformers", "accelerate", "numpy")


def names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~ @;]", r, maxsplit=1)[0].lower() for r in requirements}


def test_the_demo_target_installs_the_demo_set_not_the_full_one() -> None:
    make = (ROOT / "Makefile").read_text()
    demo = re.search(r"^demo:\n\t(.*)$", make, re.M)
    assert demo is not None
    assert "venv-demo" in demo.group(1).split(), demo.group(1)
    assert "venv" not in demo.group(1).split(), demo.group(1)
    rule = re.search(r"^\$\(DEMO_STAMP\):.*?\n\n", make, re.M | re.S)
    assert rule is not None
    installs = re.findall(r"pip install -q (?:--\S+ )*-e (\S+)", rule.group(0))
    assert installs == ["'.[operator,cli]'", "./devtools"], installs


def test_the_demo_set_has_no_torch_nor_frameworks() -> None:
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    dev = tomllib.loads((ROOT / "devtools" / "pyproject.toml").read_text())["project"]
    extras = root["optional-dependencies"]
    demo = names(root.get("dependencies", []) + extras["operator"] + extras["cli"])
    demo |= names(dev["dependencies"])
    assert not demo & set(HEAVY), demo & set(HEAVY)


def test_the_demo_imports_without_torch() -> None:
    # Block the heavy packages as an absent install would: the demo's modules must not
    # import them when they load (the real-node steps talk to the training image).
    block = "; ".join(f"sys.modules[{m!r}] = None" for m in HEAVY)
    code = f"import sys; {block}; import gaudi_devtools.demo, gaudi_kubectl.cli"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
