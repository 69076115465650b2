"""The layering the design promises, checked by import-linter (contracts in pyproject.toml)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_decisions_stay_pure_and_the_launcher_stands_alone() -> None:
    # This tree's packages, not the ones the venv was installed from (a git worktree).
    tree = os.pathsep.join(str(ROOT / d) for d in ("operator", "devtools", "training-image"))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, (tree, os.environ.get("PYTHONPATH")))),
    }
    out = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout
