"""A fork server: forks worker processes, warm, whenever the launcher asks, for its whole life.

Under the operator's recovery (`gaudi_train.managed`) a worker that dies is replaced
inside the same pod while the rest of the world waits, and the replacement should be
ready in milliseconds, not after a second `import torch`. The launcher cannot fork it
itself: by then it runs threads (its control endpoint, its store), and forking a
threaded process copies locks another thread may hold. So, first thing, before it
starts any thread, the launcher forks this server. The server stays single-threaded:
it imports the workers' modules once (torch, the helper API, the model, unless the
prefork rules of `gaudi_train.prefork` say not to, e.g. on Gaudi where forking after the
bridge loads is untested), then forks a worker per request and reports its exit.

Launcher <-> server: a SOCK_SEQPACKET pair, one JSON object per packet.

    {"op": "fork", "localRank", "argv", "env"} + the worker's link socket (SCM_RIGHTS)
        -> {"event": "started", "localRank", "pid"}
        -> {"event": "exit", "pid", "returncode"}     (returncode -N: killed by signal N)

Every worker runs in its own session (as torchrun's do), is named `gaudi3-worker`,
holds one end of a link to the launcher (`gaudi_train.worker_link`), waits there for its
first world, then runs the module or script as `__main__`. An exception that says its
world broke (`worker_link.is_world_error`) exits with EXIT_WORLD_BROKEN rather than 1,
so the launcher tells a consequence from a cause even for scripts that do not use the
helper API. Parent-death signals chain launcher -> server -> workers: when the launcher
dies, so does everything it started.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import select
import signal
import socket
import sys
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

from gaudi_train import prefork, worker_link
from gaudi_train.env import EXIT_WORLD_BROKEN

log = logging.getLogger(__name__)

SERVER_NAME = "gaudi3-forksrv"
MAX_PACKET = 1 << 20
PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Get `sig` when the parent (the thread that forked us) exits (Linux prctl)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except (OSError, AttributeError):
        pass


class ForkServer:
    """The launcher's handle on the server process."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock

    @classmethod
    def start(cls, preload: Sequence[str]) -> ForkServer:
        """Fork the server now; call it before this process starts any thread."""
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            ours.close()
            _serve(theirs, preload, parent)
        theirs.close()
        return cls(pid, ours)

    def fork(self, local_rank: int, argv: list[str], env: dict[str, str]) -> socket.socket:
        """Ask for a worker; returns the launcher's end of its link. The pid comes as a
        `started` event, its end as an `exit` event."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        request = {"op": "fork", "localRank": local_rank, "argv": argv, "env": env}
        try:
            socket.send_fds(self.sock, [json.dumps(request).encode()], [theirs.fileno()])
        finally:
            theirs.close()
        return ours

    def next_event(self) -> dict[str, Any] | None:
        """The next event (blocking); None once the server is gone."""
        try:
            data = self.sock.recv(MAX_PACKET)
        except OSError:
            return None
        return json.loads(data) if data else None

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


# -- inside the server ----------------------------------------------------------------------
def _serve(sock: socket.socket, preload: Sequence[str], parent: int) -> NoReturn:
    code = 0
    try:
        die_with_parent()
        if os.getppid() != parent:  # the launcher died before the prctl
            os._exit(1)
        # The launcher decides when workers stop; a terminal's Ctrl-C is its to handle.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        prefork.name_process(SERVER_NAME)
        prefork.clear_exit_handlers()
        logging.root.handlers.clear()
        logging.root.setLevel(logging.WARNING)
        for name in preload:
            with contextlib.suppress(Exception):  # a worker meets the error itself
                importlib.import_module(name)
        _loop(sock)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


def _loop(sock: socket.socket) -> None:
    children: set[int] = set()
    while True:
        readable, _, _ = select.select([sock], [], [], 0.05)
        if readable:
            msg, fds, _flags, _addr = socket.recv_fds(sock, MAX_PACKET, 4)
            if not msg:  # the launcher closed its end: it is exiting
                for pid in children:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGKILL)
                return
            request = json.loads(msg)
            if request.get("op") == "fork" and fds:
                pid = _fork_worker(sock, fds[0], request)
                children.add(pid)
                started = {"event": "started", "localRank": request["localRank"], "pid": pid}
                sock.send(json.dumps(started).encode())
            for fd in fds:  # the worker holds its own copy now
                os.close(fd)
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            children.discard(pid)
            code = os.waitstatus_to_exitcode(status)
            sock.send(json.dumps({"event": "exit", "pid": pid, "returncode": code}).encode())


def _fork_worker(server_sock: socket.socket, link_fd: int, request: dict[str, Any]) -> int:
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        server_sock.close()
        die_with_parent()
        os.setsid()  # as torchrun starts workers: the launcher can signal its group
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        code = _run_worker(link_fd, request["argv"], request["env"])
    except BaseException:
        traceback.print_exc()
    finally:
        prefork.exit_like_interpreter(code)


def _run_worker(link_fd: int, argv: list[str], env: dict[str, str]) -> int:
    prefork.name_process(prefork.WORKER_NAME)
    os.environ.clear()
    os.environ.update(env)
    prefork.unbuffered()
    link = worker_link.from_fd(link_fd)
    worker_link.install(link)
    link.send("hello", pid=os.getpid())
    try:
        join = link.next_join()
    except worker_link.LauncherGone:
        return 0  # dismissed before it ever joined a world
    os.environ.update(join.env())
    link.send("running", generation=join.generation)
    return prefork.run_as_main(argv, dict(os.environ), on_error=_exit_code_for)


def _exit_code_for(exc: BaseException) -> int:
    if isinstance(exc, worker_link.LauncherGone):
        return 0
    return EXIT_WORLD_BROKEN if worker_link.is_world_error(exc) else 1
