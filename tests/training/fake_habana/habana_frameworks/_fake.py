"""The fake's shared log: one JSON object per line in $FAKE_HABANA_LOG, appended by every
process that imports the fake (launcher, torchrun's workers, the test itself).

Each entry has the event, the process id, the torchrun rank (if any) and a sequence number
within its process, so a test can read each process's calls in order.
"""

from __future__ import annotations

import itertools
import json
import os
from typing import Any

LOG = "FAKE_HABANA_LOG"
# Variables whose value at import time matters to Intel's bridge (it reads them once).
WATCHED = ("PT_HPU_LAZY_MODE", "HABANA_LOGS", "GAUDI3_HPU_MODE")

_sequence = itertools.count()


def record(event: str, **fields: Any) -> None:
    entry = {
        "event": event,
        "pid": os.getpid(),
        "rank": os.environ.get("RANK"),
        "seq": next(_sequence),
        **fields,
    }
    path = os.environ.get(LOG)
    if not path:
        return
    line = json.dumps(entry) + "\n"
    # O_APPEND: whole lines from concurrent processes do not interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every entry in the log at `path`, in file order."""
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def environment() -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in WATCHED}
