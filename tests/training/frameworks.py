"""Helpers for the framework examples' tests: their output lines and a pod-like crash."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "training-image" / "examples"
# What the examples print on rank 0 (plain print: no gaudi_train logging).
STEP = re.compile(r"^step (\d+) loss ([0-9.]+)$", re.MULTILINE)
START = re.compile(r"^training from step (\d+) on (\d+) processes$", re.MULTILINE)
BATCH = re.compile(r"^global batch (\d+) = micro (\d+) x world (\d+) x accumulation (\d+)$", re.M)


def steps(text: str) -> list[tuple[int, float]]:
    return [(int(s), float(loss)) for s, loss in STEP.findall(text)]


def starts(text: str) -> list[int]:
    """The step each training attempt in this output started from."""
    return [int(s) for s, _ in START.findall(text)]


def batch_plans(text: str) -> list[tuple[int, int, int, int]]:
    """(global, micro, world, accumulation) as each attempt printed it."""
    return [(int(g), int(m), int(w), int(a)) for g, m, w, a in BATCH.findall(text)]


def descendants(pid: int) -> list[int]:
    """All processes below `pid` (torchrun starts its workers in new sessions, so a
    process-group signal would miss them)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def crash(launcher: subprocess.Popen[bytes]) -> None:
    """SIGKILL the launcher and every process under it at once, as when a pod's container
    or node dies: nothing gets to checkpoint or clean up."""
    victims = [launcher.pid, *descendants(launcher.pid)]
    assert len(victims) >= 3, "the launcher and its two workers"
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):  # gone already
            os.kill(pid, signal.SIGKILL)
    launcher.wait(timeout=30)
