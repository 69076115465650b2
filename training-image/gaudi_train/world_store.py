"""The rendezvous of an in-place generation: which launchers form the world, and the ranks.

Under operator-managed recovery the operator names each world by its in-place
generation G and says how many launchers it has (`worldPods`). The launcher of worker
index 0 hosts one TCPStore for the life of its process (on its pod IP, at
PET_RDZV_ENDPOINT's port, or at the decision's `rendezvous` address); every launcher
of generation G writes

    gaudi3/g<G>/pod/<worker index>  {"nproc", "addr", "pod"[, "masterPort"]}

and the world is formed once the records of indices 0..worldPods-1 are all there. Ranks
follow the worker index (index i's processes come after those of every index below i),
so a process keeps its rank across worlds of the same shape and the data each rank
reads, hence the loss, is that of an uninterrupted run. Workers then meet under
`gaudi3/g<G>/ready/<rank>` and build their process group under `gaudi3/g<G>/pg/`.
A launcher that gives G up (a newer decision came, or its own worker failed while G
formed) writes `gaudi3/g<G>/abandoned`, so no worker waits for it.

Keys of every generation stay in the store (a few hundred bytes each); a world created
afresh (new pods) gets a new store with its new worker 0.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from gaudi_train.rendezvous import client_store, listening_store, wait_for_listener

if TYPE_CHECKING:
    from torch.distributed import TCPStore

log = logging.getLogger(__name__)

STORE_TIMEOUT = timedelta(seconds=60)
CONNECT_SECONDS = 0.5  # one attempt; the launcher's loop tries again


def prefix(generation: int) -> str:
    return f"gaudi3/g{generation}/"


@dataclass(frozen=True)
class PodRecord:
    index: int
    nproc: int
    addr: str
    pod: str = ""
    master_port: int | None = None


@dataclass(frozen=True)
class World:
    """A formed world: the launchers' records by index, and the ranks they get."""

    generation: int
    pods: tuple[PodRecord, ...]

    @property
    def size(self) -> int:
        return sum(p.nproc for p in self.pods)

    def first_rank(self, index: int) -> int:
        return sum(p.nproc for p in self.pods if p.index < index)

    @property
    def master(self) -> tuple[str, int]:
        """Where rank 0 hosts `env://`'s store, for scripts that use it."""
        head = self.pods[0]
        return head.addr, head.master_port or 0


def free_port(addr: str) -> int:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((addr, 0))
        return int(probe.getsockname()[1])


class WorldStore:
    """This launcher's access to the rendezvous store (hosting it as worker 0)."""

    def __init__(self, bind_addr: str) -> None:
        self.bind_addr = bind_addr
        self._server: TCPStore | None = None  # while this launcher hosts
        self._client: TCPStore | None = None
        self._endpoint: tuple[str, int] | None = None

    def connect(self, endpoint: tuple[str, int], host: bool) -> bool:
        """Be connected to the store at `endpoint` (listening there as host); False when
        it cannot be reached yet (try again later)."""
        if self._endpoint != endpoint:
            self._client = None
            self._endpoint = endpoint
        if self._client is not None:
            return True
        if host:
            if self._server is None:
                self._server = listening_store(self.bind_addr, endpoint[1], STORE_TIMEOUT)
                log.info("hosting the world's store on %s:%d", self.bind_addr, endpoint[1])
            self._client = self._server
            return True
        if not wait_for_listener(endpoint[0], endpoint[1], CONNECT_SECONDS):
            return False
        self._client = client_store(endpoint[0], endpoint[1], STORE_TIMEOUT)
        return True

    def forget(self) -> None:
        """Drop the client after an error; the next `connect` opens a new one."""
        if self._client is not self._server:
            self._client = None

    @property
    def store(self) -> TCPStore:
        if self._client is None:
            raise RuntimeError("not connected to the world's store")
        return self._client

    def register(self, generation: int, record: PodRecord) -> None:
        data: dict[str, Any] = {"nproc": record.nproc, "addr": record.addr, "pod": record.pod}
        if record.master_port is not None:
            data["masterPort"] = record.master_port
        self.store.set(f"{prefix(generation)}pod/{record.index}", json.dumps(data))

    def formed(self, generation: int, world_pods: int) -> World | None:
        """The world of `generation` once all its launchers registered, else None."""
        keys = [f"{prefix(generation)}pod/{i}" for i in range(world_pods)]
        if not self.store.check(keys):
            return None
        pods = []
        for index, key in enumerate(keys):
            data = json.loads(self.store.get(key))
            pods.append(
                PodRecord(
                    index=index,
                    nproc=int(data["nproc"]),
                    addr=str(data["addr"]),
                    pod=str(data.get("pod", "")),
                    master_port=data.get("masterPort"),
                )
            )
        return World(generation, tuple(pods))

    def abandon(self, generation: int, pod: str) -> None:
        self.store.set(f"{prefix(generation)}abandoned", pod or "?")

    def close(self) -> None:
        self._client = None
        self._server = None  # the server stops listening when the object goes


def wait_ready(
    store: TCPStore,
    generation: int,
    rank: int,
    world_size: int,
    give_up: Any,
    poll: float = 0.01,
) -> bool:
    """A worker's meeting before its process group: True once every rank of the world
    is there, False as soon as `give_up()` or the world was abandoned."""
    base = prefix(generation)
    store.set(f"{base}ready/{rank}", "1")
    keys = [f"{base}ready/{r}" for r in range(world_size)]
    abandoned = [f"{base}abandoned"]
    while not store.check(keys):
        if give_up() or store.check(abandoned):
            return False
        time.sleep(poll)
    return True
