"""Named crash points for fault-injection tests: `GAUDI3_FAILPOINTS=after-restart-intent`
makes the process die (as SIGKILL would, no clean-up) the moment it passes that point.
Unset, a failpoint is one dictionary lookup."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

_ARMED = frozenset(filter(None, os.environ.get("GAUDI3_FAILPOINTS", "").split(",")))


def hit(name: str) -> None:
    if name in _ARMED:
        log.error("failpoint %s: exiting now, as a crash would", name)
        logging.shutdown()
        os._exit(137)


def armed(name: str) -> bool:
    """For failpoints that change behaviour rather than crash (e.g. drop an event)."""
    if name not in _ARMED:
        return False
    if name not in _announced:
        _announced.add(name)
        log.warning("failpoint %s: active", name)
    return True


_announced: set[str] = set()
