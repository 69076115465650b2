"""The write fence: once the leader can no longer prove the Lease is its own, no write this
process sends reaches the API server.

`FENCE` holds a deadline on a clock that keeps counting while the process is paused
(CLOCK_BOOTTIME: a SIGSTOP, a suspended VM). The leader election moves it forward on each
renewal (`runtime/leader.py`) and closes it for good when leadership ends. Every HTTP
session of the operator (its own client's, kopf's, the election's: all built by
`clients.kube.session_for`) sends its requests through `FencedRequest`, which reads the
clock itself at the moment the request goes onto the connection, after the connection is
established and with no await between the check and the socket write. So a request queued
before the deadline but sent after it is refused, and a process resumed after a pause
refuses its first write whatever else runs first: no timer callback has to fire for the
fence to hold.

Reads are not fenced (they change nothing); writes are POST, PUT, PATCH and DELETE.

What the fence cannot stop (docs/high-availability.md): bytes handed to the kernel before
the deadline that the network or the API server's own queues hold until after the Lease
expired, and a pause that lands in the few Python statements between the clock read and
the socket write.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _clock() -> float:
    # CLOCK_MONOTONIC stops while the machine is suspended; the standby's clock does not.
    if hasattr(time, "CLOCK_BOOTTIME"):
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    return time.monotonic()


class FencedWrite(aiohttp.ClientError):
    """A write refused locally: the Lease may no longer be ours. An aiohttp ClientError, so
    aiohttp passes it through unchanged and the operator's loops count it as an API error
    (`clients.kube.transient`), not a bug."""


class Fence:
    """Writes go out only while `clock()` is below the deadline.

    Open (no deadline) until the election first sets one: a process without leader
    election, or one still campaigning (then only the election itself runs)."""

    def __init__(self, clock: Callable[[], float] = _clock) -> None:
        self.clock = clock
        self._deadline = math.inf
        self._closed = False
        self.refused = 0

    @property
    def deadline(self) -> float:
        return -math.inf if self._closed else self._deadline

    def allows(self) -> bool:
        return self.clock() < self.deadline

    def remaining(self) -> float:
        return self.deadline - self.clock()

    def hold_until(self, deadline: float) -> None:
        """The Lease is ours until `deadline` (last renewal sent + renew deadline). Never
        reopens a closed fence."""
        if not self._closed:
            self._deadline = deadline

    def close(self) -> None:
        """For good: leadership ended (lost, released or expired)."""
        self._closed = True

    def check(self, method: str, url: object) -> None:
        if method.upper() in WRITE_METHODS and not self.allows():
            self.refused += 1
            raise FencedWrite(f"refused {method} {url}: past the leader's renew deadline")


FENCE = Fence()


class FencedRequest(aiohttp.ClientRequest):
    """aiohttp's request, checked against `FENCE` when it is written, not when queued.

    `send` runs once the connection is established and writes (or buffers) the head
    without awaiting; on Python < 3.12 aiohttp writes a body, together with the buffered
    head, from a task one loop step later, so `write_bytes` checks again: a pause between
    the two steps still sends nothing after the deadline."""

    fence: Fence = FENCE

    async def send(self, conn: Any) -> aiohttp.ClientResponse:
        self.fence.check(self.method, self.url)
        return await super().send(conn)

    async def write_bytes(self, writer: Any, conn: Any, *args: Any, **kwargs: Any) -> None:
        try:
            self.fence.check(self.method, self.url)
        except FencedWrite as err:
            # Nothing was written yet: fail the response that waits on this connection.
            if conn.protocol is not None:
                conn.protocol.set_exception(err)
            conn.close()
            return
        await super().write_bytes(writer, conn, *args, **kwargs)


def request_class(fence: Fence) -> type[FencedRequest]:
    """`FencedRequest` bound to another fence (tests use one with a fake clock)."""
    if fence is FENCE:
        return FencedRequest
    return type("FencedRequest", (FencedRequest,), {"fence": fence})
