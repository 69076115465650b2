"""Worker processes forked before the rendezvous, so a new world does not import torch twice.

torchrun starts each worker as a fresh `python -u -m gaudi_train.worker` (or script)
only after the rendezvous, and that interpreter imports torch again before it can join
the process group: seconds of CPU on every restart, after the launcher already paid them.
Here the launcher, once it has imported torch and before it starts any thread of its
own, forks one waiting process per local worker ("zygote"). Each one imports the
worker's modules while the launcher waits for its peers, then blocks on a pipe. When
torchrun starts worker `i`, `SubprocessHandler._popen` hands zygote `i` the command line
and environment torchrun built (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, ...), and the
zygote becomes that worker: it sets the environment, runs the module or script as
`__main__` and exits with its code. It is a child of the launcher in its own session,
like the process torchrun would have started, so torchrun watches, signals (killpg) and
reaps it as before, and reads its exit code and error file the same way.

A zygote is used only when the worker would have started the same way: the command is
`python -u -m MODULE ...` or `python -u SCRIPT ...` with no output redirection, and the
environment differs from the one the zygote was forked with only in torchrun's
per-worker variables. Anything else (a restart inside this launcher, a
`--log-dir`/`--redirects` run, an environment change) starts a fresh interpreter as
torchrun does. Off when `GAUDI3_PREFORK=0`, when the number of workers is not known
without probing devices, and by default where `habana_frameworks` is installed: the
HPU path keeps fresh interpreters (set `GAUDI3_PREFORK=1` to try it there; untested on
Gaudi hardware).
"""

from __future__ import annotations

import atexit
import importlib
import importlib.util
import io
import json
import logging
import os
import runpy
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, NoReturn

log = logging.getLogger(__name__)

SWITCH = "GAUDI3_PREFORK"
# What torchrun's agent sets per worker (local_elastic_agent._start_workers and
# multiprocessing.api): everything else must be as it was when the zygote was forked.
PER_WORKER_ENV = frozenset(
    {
        "LOCAL_RANK",
        "RANK",
        "GROUP_RANK",
        "ROLE_RANK",
        "ROLE_NAME",
        "LOCAL_WORLD_SIZE",
        "WORLD_SIZE",
        "GROUP_WORLD_SIZE",
        "ROLE_WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
        "TORCH_NCCL_ASYNC_ERROR_HANDLING",
        "NCCL_ASYNC_ERROR_HANDLING",
    }
)
PER_WORKER_PREFIXES = ("TORCHELASTIC_",)
WORKER_NAME = "gaudi3-worker"  # the process name (comm) of a forked worker
# Imported by each zygote while the launcher waits for its peers: the helper API
# (torch.nn, DDP, torch.distributed.checkpoint) and the built-in workload's model and data.
PRELOAD = ("gaudi_train.session", "gaudi_train.model", "gaudi_train.data")


def wanted(env: Mapping[str, str], nproc_known: bool) -> bool:
    """Whether to fork zygotes here: see the module's doc for when not."""
    switch = env.get(SWITCH, "").strip().lower()
    if switch in ("0", "false", "no", "off"):
        return False
    if not hasattr(os, "fork") or not nproc_known:
        return False
    if switch in ("1", "true", "yes", "on"):
        return True
    return importlib.util.find_spec("habana_frameworks") is None


def compatible_env(forked: Mapping[str, str], final: Mapping[str, str]) -> list[str]:
    """Variables (other than torchrun's per-worker ones) that differ; [] = compatible."""
    return sorted(
        key
        for key in set(forked) | set(final)
        if forked.get(key) != final.get(key)
        and key not in PER_WORKER_ENV
        and not key.startswith(PER_WORKER_PREFIXES)
    )


def worker_argv(args: Sequence[str]) -> list[str] | None:
    """torchrun's `python -u -m MODULE ...` / `python -u SCRIPT ...` without the
    interpreter and `-u`; None for any other command (e.g. `--no-python`, numactl)."""
    if len(args) < 3 or args[0] != sys.executable or args[1] != "-u":
        return None
    if args[2] == "-m":
        return list(args[2:]) if len(args) >= 4 else None
    return None if args[2].startswith("-") else list(args[2:])


class ForkedProcess:
    """The part of `subprocess.Popen` torchrun uses, for a zygote that became a worker."""

    def __init__(self, pid: int, args: Sequence[str]) -> None:
        self.pid = pid
        self.args = list(args)
        self.returncode: int | None = None
        self.stdin = self.stdout = self.stderr = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self._reap(os.WNOHANG)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if timeout is None:
            while self.returncode is None:
                self._reap(0)
            return self.returncode
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.01)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def _reap(self, flags: int) -> None:
        try:
            pid, status = os.waitpid(self.pid, flags)
        except ChildProcessError:  # reaped elsewhere: the code is lost, as with Popen
            self.returncode = 255
            return
        if pid == self.pid:
            self.returncode = os.waitstatus_to_exitcode(status)


@dataclass
class Pool:
    """The zygotes forked by `fork_zygotes`, one per local worker, and their environment."""

    env: dict[str, str]
    waiting: dict[int, tuple[int, int]] = field(default_factory=dict)  # local rank: pid, fd
    used: int = 0

    def hand_off(self, local_rank: int, args: Sequence[str], env: Mapping[str, str]) -> Any:
        """A `ForkedProcess` running the worker, or None: start it the usual way."""
        zygote = self.waiting.pop(local_rank, None)
        if zygote is None:
            return None
        pid, fd = zygote
        argv = worker_argv(args)
        differs = compatible_env(self.env, env)
        if argv is None or differs:
            log.info(
                "local rank %d starts a fresh interpreter (%s)",
                local_rank,
                f"environment differs: {', '.join(differs)}" if differs else "command",
            )
            self._dismiss(pid, fd)
            return None
        payload = json.dumps({"argv": argv, "env": dict(env)}).encode()
        try:
            with os.fdopen(fd, "wb") as pipe:
                pipe.write(payload)
        except OSError:  # the zygote died (e.g. killed): start the worker the usual way
            _reap_quietly(pid)
            return None
        self.used += 1
        log.info("local rank %d runs in process %d, forked before the rendezvous", local_rank, pid)
        return ForkedProcess(pid, args)

    def close(self) -> None:
        """Dismiss the zygotes no worker used."""
        for pid, fd in self.waiting.values():
            self._dismiss(pid, fd)
        self.waiting.clear()

    @staticmethod
    def _dismiss(pid: int, fd: int) -> None:
        # Killed, not told: one may still be importing, and the launcher must not wait
        # for that when it stops. A zygote holds no files or state of its own.
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.close(fd)
        _reap_quietly(pid)


def _reap_quietly(pid: int) -> None:
    with suppress(ChildProcessError):
        os.waitpid(pid, 0)


def fork_zygotes(nproc: int, preload: Sequence[str] = PRELOAD) -> Pool | None:
    """Fork `nproc` zygotes now; None when this process already runs other threads
    (forking then could copy a lock another thread holds)."""
    if threading.active_count() != 1:
        log.info("not forking workers early: %d threads run", threading.active_count())
        return None
    for stream in (sys.stdout, sys.stderr):
        stream.flush()  # or the children would write the parent's buffered output again
    pool = Pool(env=dict(os.environ))
    for local_rank in range(nproc):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(write_fd)
            for _, other in pool.waiting.values():
                os.close(other)  # only the launcher may hold a zygote's write end
            _zygote(read_fd, preload)
        os.close(read_fd)
        pool.waiting[local_rank] = (pid, write_fd)
    return pool


@contextmanager
def installed(pool: Pool | None) -> Iterator[None]:
    """torchrun's SubprocessHandler starts workers from `pool` while this is active."""
    if pool is None:
        yield
        return
    from torch.distributed.elastic.multiprocessing.subprocess_handler import (
        subprocess_handler as sh,
    )

    original: Callable[..., Any] = sh.SubprocessHandler._popen

    def _popen(handler: Any, args: tuple[str, ...], env: dict[str, str]) -> Any:
        if handler._stdout is None and handler._stderr is None:
            proc = pool.hand_off(handler.local_rank_id, args, env)
            if proc is not None:
                return proc
        return original(handler, args, env)

    sh.SubprocessHandler._popen = _popen  # type: ignore[method-assign]
    try:
        yield
    finally:
        sh.SubprocessHandler._popen = original  # type: ignore[method-assign]
        pool.close()


# -- inside the zygote ----------------------------------------------------------------------
def _zygote(read_fd: int, preload: Sequence[str]) -> NoReturn:
    code = 1
    try:
        os.setsid()  # torchrun starts workers in a new session and signals their group
        clear_exit_handlers()  # the launcher's, not the worker's
        # The worker configures logging itself (basicConfig is a no-op with handlers).
        logging.root.handlers.clear()
        logging.root.setLevel(logging.WARNING)
        for name in preload:
            # On an error the worker meets it where a fresh interpreter would.
            with suppress(Exception):
                importlib.import_module(name)
        with os.fdopen(read_fd, "rb") as pipe:
            payload = pipe.read()
        if not payload:  # dismissed: the launcher did not need this worker
            os._exit(0)
        spec = json.loads(payload)
        code = _become_worker(spec["argv"], spec["env"])
    except BaseException:  # a zygote must never return into the launcher
        traceback.print_exc()
    finally:
        exit_like_interpreter(code)


def _become_worker(argv: list[str], env: dict[str, str]) -> int:
    name_process(WORKER_NAME)
    os.environ.clear()
    os.environ.update(env)
    unbuffered()  # torchrun runs workers with `python -u`
    return run_as_main(argv, env)


def run_as_main(
    argv: list[str],
    env: Mapping[str, str],
    on_error: Callable[[BaseException], int] | None = None,
) -> int:
    """Run `-m MODULE ...` or `SCRIPT ...` as `__main__` in this process; its exit code.

    An exception it raises is printed as the interpreter would; `on_error` picks the
    exit code for it (default 1)."""
    # sys.path as the fresh interpreter would have it: the script's folder or the working
    # directory first, then PYTHONPATH.
    first = os.getcwd() if argv[0] == "-m" else os.path.dirname(os.path.realpath(argv[0]))
    extra = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]
    sys.path[:1] = [first, *extra]
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(argv)
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as exc:
        return _exit_code(exc.code)
    except KeyboardInterrupt:
        traceback.print_exc()
        return 128 + signal.SIGINT
    except BaseException as exc:  # printed as the interpreter would, exit 1
        traceback.print_exc()
        return 1 if on_error is None else on_error(exc)
    return 0


def name_process(name: str) -> None:
    """`ps -o comm` / /proc/PID/comm shows `name`; the command line stays the launcher's."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def unbuffered() -> None:
    for name, fd in (("stdout", 1), ("stderr", 2)):
        old = getattr(sys, name)
        try:
            stream = io.TextIOWrapper(
                open(fd, "wb", buffering=0, closefd=False),  # noqa: SIM115 - the process's own
                encoding=old.encoding,
                errors=old.errors,
                write_through=True,
            )
        except (OSError, AttributeError):
            continue
        setattr(sys, name, stream)


def clear_exit_handlers() -> None:
    clear = getattr(atexit, "_clear", None)
    if clear is not None:
        clear()


def exit_like_interpreter(code: int) -> NoReturn:
    """End like an interpreter would (non-daemon threads, atexit, flush), never return."""
    try:
        main = threading.main_thread()
        for thread in threading.enumerate():
            if thread is not main and not thread.daemon:
                thread.join()
        run = getattr(atexit, "_run_exitfuncs", None)
        if run is not None:
            run()
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
    finally:
        os._exit(code)
