"""A worker process's end of the socket to its launcher (operator-managed recovery only).

Under the operator's recovery (`gaudi_train.managed`) the launcher forks every worker
before any world exists and keeps it across worlds. Each worker holds one end of a
SOCK_SEQPACKET socket pair (one JSON object per packet), the launcher the other:

    launcher -> worker   {"op": "join", ...}     form the world of a generation (`Join`)
                         {"op": "leave", "world": G}
                                                 leave the world of generation G at the
                                                 next step boundary (the ranks vote on it)
    worker -> launcher   {"op": "hello", "pid"}  forked, waiting for its first world
                         {"op": "running", "generation"}
                                                 the module or script starts (first world)
                         {"op": "session"}       it uses the helper API: it will resume
                         {"op": "joined", "generation", "rank"}
                         {"op": "resumed", "generation", "rank", "source", "step", "fromRank"}
                         {"op": "step", "step"}  progress (at most a few per second)
                         {"op": "left", "generation", "reason", "step", "valid", "error"}
                                                 out of the world, alive, waiting to join

Torch-free: the fork server's runner uses it before the worker imports anything.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

MAX_PACKET = 1 << 20
# `left` reasons
LEFT_BROKEN = "broken"  # a collective failed: a peer went away
LEFT_REQUESTED = "leave"  # the launcher asked (a newer generation was decided)
LEFT_PEER_STOPPED = "peer-stopped"  # a peer got SIGTERM; the world checkpointed and ended
LEFT_ABANDONED = "abandoned"  # the world being formed was given up before it formed

# Messages a gloo (or HCCL) collective raises when a peer process is gone; torch raises
# plain RuntimeErrors for most of them ("Connection closed by peer" seen here on gloo).
WORLD_ERROR_TEXTS = (
    "Connection closed by peer",
    "Connection reset by peer",
    "Connection refused",
    "Broken pipe",
    "gloo/transport",
    "Socket Timeout",
    "connectFullMesh",
)
WORLD_ERROR_TYPES = frozenset(
    {"WorldChanged", "DistError", "DistBackendError", "DistNetworkError", "DistStoreError"}
)


def is_world_error(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) says the world broke, not that this code did."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if type(current).__name__ in WORLD_ERROR_TYPES:
            return True
        if isinstance(current, RuntimeError) and any(t in str(current) for t in WORLD_ERROR_TEXTS):
            return True
        current = current.__cause__ or current.__context__
    return False


@dataclass(frozen=True)
class Join:
    """The world a worker is told to form: who it is in it and where its store is."""

    generation: int
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node_rank: int  # the launcher's worker index
    world_pods: int
    rdzv_host: str
    rdzv_port: int
    master_addr: str
    master_port: int
    run_id: str

    @classmethod
    def from_message(cls, msg: dict[str, Any]) -> Join:
        host, _, port = str(msg["rdzv"]).rpartition(":")
        return cls(
            generation=int(msg["generation"]),
            rank=int(msg["rank"]),
            world_size=int(msg["worldSize"]),
            local_rank=int(msg["localRank"]),
            local_world_size=int(msg["localWorldSize"]),
            node_rank=int(msg["nodeRank"]),
            world_pods=int(msg["worldPods"]),
            rdzv_host=host,
            rdzv_port=int(port),
            master_addr=str(msg["masterAddr"]),
            master_port=int(msg["masterPort"]),
            run_id=str(msg["runId"]),
        )

    def to_message(self) -> dict[str, Any]:
        return {
            "op": "join",
            "generation": self.generation,
            "rank": self.rank,
            "worldSize": self.world_size,
            "localRank": self.local_rank,
            "localWorldSize": self.local_world_size,
            "nodeRank": self.node_rank,
            "worldPods": self.world_pods,
            "rdzv": f"{self.rdzv_host}:{self.rdzv_port}",
            "masterAddr": self.master_addr,
            "masterPort": self.master_port,
            "runId": self.run_id,
        }

    def env(self) -> dict[str, str]:
        """What torchrun would set for this worker: scripts that do not use the helper
        API (Lightning, the HF Trainer) start from it with `env://`, rank 0 hosting."""
        return {
            "RANK": str(self.rank),
            "WORLD_SIZE": str(self.world_size),
            "LOCAL_RANK": str(self.local_rank),
            "LOCAL_WORLD_SIZE": str(self.local_world_size),
            "GROUP_RANK": str(self.node_rank),
            "ROLE_RANK": str(self.rank),
            "ROLE_WORLD_SIZE": str(self.world_size),
            "GROUP_WORLD_SIZE": str(self.world_pods),
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
            "TORCHELASTIC_RUN_ID": self.run_id,
            "TORCHELASTIC_RESTART_COUNT": str(self.generation),
            "GAUDI3_IN_PLACE_GENERATION": str(self.generation),
            "GAUDI3_WORKER_INDEX": str(self.node_rank),
            "GAUDI3_RDZV_STORE": f"{self.rdzv_host}:{self.rdzv_port}",
        }


class LauncherGone(RuntimeError):
    """The launcher closed its end: it is stopping."""


class Link:
    """The worker's end; a reader thread takes the launcher's messages as they come."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Condition()
        self._join: Join | None = None  # the newest join not yet taken
        self._leave_upto = -1  # worlds up to this generation must be left
        self._closed = False
        self._send_lock = threading.Lock()
        self._last_step_sent = 0.0
        threading.Thread(target=self._read, name="gaudi3-link", daemon=True).start()

    # -- from the launcher ---------------------------------------------------------------
    def _read(self) -> None:
        while True:
            try:
                data = self._sock.recv(MAX_PACKET)
            except OSError:
                data = b""
            if not data:
                with self._lock:
                    self._closed = True
                    self._lock.notify_all()
                return
            msg = json.loads(data)
            with self._lock:
                if msg.get("op") == "leave":
                    self._leave_upto = max(self._leave_upto, int(msg["world"]))
                elif msg.get("op") == "join":
                    join = Join.from_message(msg)
                    if self._join is None or join.generation >= self._join.generation:
                        self._join = join
                    # A join for a newer world also ends every older one.
                    self._leave_upto = max(self._leave_upto, join.generation - 1)
                self._lock.notify_all()

    def leave_requested(self, world: int) -> bool:
        """The launcher wants this process out of the world of generation `world`."""
        with self._lock:
            return self._leave_upto >= world

    @property
    def closed(self) -> bool:
        with self._lock:
            return self._closed

    def next_join(self, stop: Callable[[], bool] = lambda: False, poll: float = 0.05) -> Join:
        """Block until the launcher says which world to form (the newest one wins).
        Raises LauncherGone when the launcher closes the link or `stop()` turns true
        (e.g. SIGTERM while waiting outside a world)."""
        with self._lock:
            while self._join is None:
                if self._closed:
                    raise LauncherGone("the launcher closed the link")
                if stop():
                    raise LauncherGone("stopping")
                self._lock.wait(poll)
            join, self._join = self._join, None
            return join

    # -- to the launcher -----------------------------------------------------------------
    def send(self, op: str, **fields: Any) -> None:
        data = json.dumps({"op": op, **fields}).encode()
        # OSError: the launcher is gone, and the parent-death signal ends this process soon.
        with self._send_lock, contextlib.suppress(OSError):
            self._sock.send(data)

    def step(self, step: int, every: float = 0.25) -> None:
        """Report progress, at most every `every` seconds."""
        now = time.monotonic()
        if now - self._last_step_sent >= every:
            self._last_step_sent = now
            self.send("step", step=step)


_current: Link | None = None


def install(link: Link) -> None:
    global _current
    _current = link


def current() -> Link | None:
    """This process's link to its launcher, or None (not under operator-managed recovery)."""
    return _current


def from_fd(fd: int) -> Link:
    return Link(socket.socket(fileno=fd))
