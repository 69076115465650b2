"""torchrun's c10d rendezvous, with every store on the pod's own address.

torch's own c10d backend guesses whether this process hosts the store ("is the endpoint
one of my addresses?") and lets TCPStore listen on every interface. Neither holds where
pods share one network namespace (host networking: every loopback address is local to
every pod), and Debian's torch is built without libuv, which TCPStore asks for by
default. This backend (`--rdzv-backend gaudi3-c10d`) instead:

- hosts the rendezvous store on worker 0 only (`is_host` from the launcher), listening
  on the pod IP (`bind_addr`), everyone else connecting to the endpoint's DNS name;
- hosts each round's bootstrap store (the one the workers' process group uses) on the
  rendezvous rank 0, on that pod's IP (torchrun's `--local-addr`), and a fresh one per
  round, so a restarted world never reads the previous world's keys;
- uses TCPStore's classic (non-libuv) server, which every torch build has;
- waits for peers without torch's fixed 1 s sleeps: the rendezvous state is polled every
  `poll_seconds(max_nodes)` (0.1 s for small worlds, torch's 1 s from 100 nodes on, so the
  store host answers about 100 polls a second whatever the size), and a client that starts
  before the store is up retries its connection every 0.05 s, not TCPStore's 1 s;
- with `world_pods=N` (the operator's GAUDI3_WORLD_PODS, see `closes_early`) closes a
  round as soon as the N pods the world was created for have joined, instead of waiting
  torch's last call (30 s) for pods up to `max_nodes` that the operator never created.

Workers reach the bootstrap store through `client_store` (see `Session`).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Collection, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from torch.distributed import TCPStore
    from torch.distributed.elastic.rendezvous import RendezvousHandler, RendezvousParameters

BACKEND = "gaudi3-c10d"
DEFAULT_PORT = 29400
READ_TIMEOUT_SECONDS = 60
POLLS_PER_SECOND = 100  # at the store host, from all waiting nodes together
MIN_POLL_SECONDS = 0.1
CONNECT_RETRY_SECONDS = 0.05

log = logging.getLogger(__name__)


def poll_seconds(max_nodes: int) -> float:
    """How long a waiting node sleeps between two reads of the rendezvous state."""
    return min(1.0, max(MIN_POLL_SECONDS, max_nodes / POLLS_PER_SECOND))


def listening_store(addr: str, port: int, timeout: timedelta) -> TCPStore:
    """A TCPStore server listening on `addr`:`port` only (port 0 picks a free one)."""
    from torch.distributed import TCPStore

    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((addr, port))
        sock.listen(512)
        bound = int(sock.getsockname()[1])
        # TCPStore takes the listening socket over (and closes it with the store).
        fd = sock.detach()
    except BaseException:
        sock.close()
        raise
    return TCPStore(
        addr,
        bound,
        is_master=True,
        multi_tenant=True,
        master_listen_fd=fd,
        use_libuv=False,
        timeout=timeout,
    )


def client_store(
    host: str, port: int, timeout: timedelta, world_size: int | None = None
) -> TCPStore:
    """A TCPStore client; waits (up to `timeout`) for the server to come up."""
    from torch.distributed import TCPStore

    wait_for_listener(host, port, timeout.total_seconds())
    return TCPStore(host, port, world_size, is_master=False, timeout=timeout, use_libuv=False)


def wait_for_listener(host: str, port: int, timeout: float) -> bool:
    """Until `host`:`port` accepts a connection (True) or `timeout` passes (False).

    TCPStore's client sleeps 1 s after a refused connection; a new world's non-host
    workers often start before worker 0's store is up."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1):
                return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(CONNECT_RETRY_SECONDS)


def poll_faster(interval: float) -> None:
    """Make torch's dynamic rendezvous sleep `interval` seconds, not 1 s, between polls.

    Its op executor calls `dynamic_rendezvous._delay(seconds=1)` when it must wait for
    other nodes (the only 1 s delay there); every other delay is passed on unchanged."""
    from torch.distributed.elastic.rendezvous import dynamic_rendezvous

    current = dynamic_rendezvous._delay
    original = getattr(current, "__wrapped__", current)

    def _delay(seconds: float | tuple[float, float]) -> None:
        # torch calls it by keyword: `seconds` must stay the parameter's name.
        original(seconds=interval if seconds == 1 else seconds)

    _delay.__wrapped__ = original  # type: ignore[attr-defined]
    dynamic_rendezvous._delay = _delay


class RoundState(Protocol):
    """What `closes_early` reads of torch's `_RendezvousState`."""

    closed: bool
    complete: bool
    participants: Mapping[Any, int]
    wait_list: Collection[Any]
    redundancy_list: Collection[Any]


def closes_early(state: RoundState, node: object, min_nodes: int, world_pods: int) -> bool:
    """Whether `node` may close the open round now, before torch's last call.

    torch closes a round at `max_nodes` participants, or `last_call` (30 s) after
    `min_nodes` joined. A pod knows how many worker pods the operator created its world
    with (`world_pods`); once that many are participants, waiting longer only waits for
    pods that do not exist, unless a node is waiting to join. Why that guard suffices
    (torch's `dynamic_rendezvous`):

    - A node that finds the round complete and not full joins `wait_list`
      (`_RendezvousJoinOp`); that is how a grow starts: the running nodes' agents see
      `num_nodes_waiting() > 0` and re-rendezvous.
    - It leaves `wait_list` only by becoming a participant (`_add_to_participants`
      removes it), by its own join timeout, or when its heartbeat expires (the state
      sanitizer drops dead nodes). Neither a round advancing
      (`_remove_participant_epilogue`) nor anything else clears it.
    - So while a newcomer has not joined yet, `wait_list` is not empty and no one closes
      early; nodes that stayed through a scale-up still carry their old, smaller
      `world_pods`, and this is what keeps them from closing the round without the new
      pods. The same holds for `redundancy_list` (nodes beyond `max_nodes`, about to join
      a round with room).
    - A stale entry (a node that died waiting) only costs torch's last call, as before.
    """
    return (
        not state.closed
        and not state.complete
        and node in state.participants
        and len(state.participants) >= max(world_pods, min_nodes)
        and not state.wait_list
        and not state.redundancy_list
    )


def close_when_world_joined(handler: Any, world_pods: int) -> None:
    """Make `handler`'s rendezvous rounds close as `closes_early` allows.

    torch builds its join operation inside `next_rendezvous` from the module's class, with
    no arguments, and hands it to the handler's op executor. `world_pods` is a setting of
    this handler, so rather than replace torch's class for the whole process, this
    handler's executor wraps the join operation it is given: torch decides first, and
    only its "keep waiting" answer (SYNC) to a participant of an open round is turned into
    completing the round when `closes_early` says so. Errors, timeouts, keep-alives and
    every other transition stay torch's."""
    from torch.distributed.elastic.rendezvous import dynamic_rendezvous as dr

    executor = handler._op_executor
    run = executor.run

    def run_op(
        state_handler: Callable[[Any, float], Any],
        deadline: float,
        update_deadline: Callable[[timedelta], float] | None = None,
    ) -> None:
        op = state_handler
        if isinstance(op, dr._RendezvousJoinOp):

            def join_or_close(ctx: Any, deadline: float) -> Any:
                action = op(ctx, deadline)
                min_nodes = ctx.settings.min_nodes
                if action == dr._Action.SYNC and closes_early(
                    ctx.state, ctx.node, min_nodes, world_pods
                ):
                    log.info(
                        "closing rendezvous round %d with %d of at most %d nodes: "
                        "the pods this world was created with have joined",
                        ctx.state.round,
                        len(ctx.state.participants),
                        ctx.settings.max_nodes,
                    )
                    return dr._Action.MARK_RENDEZVOUS_COMPLETE
                return action

            state_handler = join_or_close
        run(state_handler, deadline, update_deadline)

    executor.run = run_op


def create_handler(params: RendezvousParameters) -> RendezvousHandler:
    """torchrun's dynamic rendezvous over a store placed as this module's doc says."""
    from torch.distributed.elastic.rendezvous.c10d_rendezvous_backend import (
        C10dRendezvousBackend,
    )
    from torch.distributed.elastic.rendezvous.dynamic_rendezvous import (
        create_handler as dynamic_handler,
    )
    from torch.distributed.elastic.rendezvous.utils import parse_rendezvous_endpoint

    host, port = parse_rendezvous_endpoint(params.endpoint, default_port=DEFAULT_PORT)
    timeout = timedelta(seconds=params.get_as_int("read_timeout", READ_TIMEOUT_SECONDS) or 60)
    if params.get_as_bool("is_host", False):
        store = listening_store(params.get("bind_addr") or host, port, timeout)
    else:
        store = client_store(host, port, timeout)
    handler: Any = dynamic_handler(store, C10dRendezvousBackend(store, params.run_id), params)
    poll_faster(poll_seconds(params.max_nodes))
    world_pods = params.get_as_int("world_pods")
    if world_pods is not None:
        close_when_world_joined(handler, world_pods)

    def bootstrap_server(addr: str, port: int) -> TCPStore:
        return listening_store(addr, port, timeout)

    join = handler.next_rendezvous

    def next_rendezvous() -> Any:
        # torch keeps the first round's bootstrap store for the handler's life; a new
        # world on it would read the old world's barrier counters and peer addresses.
        handler._bootstrap_store_info = None
        handler._shared_tcp_store_server = None
        return join()

    # Instance attributes over torch's methods: the rest of its handler stays as is.
    handler._create_tcp_store_server = bootstrap_server
    handler.next_rendezvous = next_rendezvous
    handler.get_backend = lambda: BACKEND  # torchrun checks it against --rdzv-backend
    return handler  # type: ignore[no-any-return]


def register() -> None:
    """Make `--rdzv-backend gaudi3-c10d` known to torchrun in this process."""
    from torch.distributed.elastic.rendezvous import rendezvous_handler_registry

    # Registering the same creator again is allowed (a second launch in one process).
    rendezvous_handler_registry.register(BACKEND, create_handler)
