"""The layering the design promises, checked by import-linter (contracts in pyproject.toml)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
# This tree's packages, as pytest's pythonpath has them (the venv may hold another tree's).
SOURCES = ("operator", "devtools", "training-image", "kubectl-plugin")


def test_decisions_stay_pure_and_the_launcher_stands_alone() -> None:
    out = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(str(ROOT / d) for d in SOURCES)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout
