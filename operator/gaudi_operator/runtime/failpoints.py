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
