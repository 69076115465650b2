"""Operator-managed recovery: the launcher runs the workers itself, and the operator decides.

On when the operator sets GAUDI3_CONTROL_PORT (and GAUDI3_CONTROL_TOKEN); without it the
launcher runs torchrun, whose agent restarts failed workers on its own (see
`gaudi_train.launcher`). Here, instead:

- The workers are forked by a fork server (`gaudi_train.forkserver`) before any world
  exists, and live across worlds: a worker whose world breaks leaves it (its process
  group is destroyed), keeps its model and optimizer in memory, and waits to join the
  next one (`Session.recover`).
- When a local worker process fails, this launcher takes its other workers out of the
  world, restarts nothing, reports the failure on its control endpoint
  (`gaudi_train.control_server`: exit code, signal, rank, local rank, pod, step) and
  waits. Peers whose collectives broke report `world-broken`, not a cause, and wait too.
- The operator posts a decision. `restart` at in-place generation G: every launcher of
  the world takes its workers out of the old world (if they are still in it), forks a
  replacement for each dead one (warm: the fork server imported everything), and
  re-rendezvouses in its existing pod (`gaudi_train.world_store`). The new world's ranks
  agree on the newest state a survivor holds and take it from that peer, or from the
  checkpoint when none survived (`gaudi_train.peer_state`). `fail`: stop and exit.
- A spare (GAUDI3_SPARE=1) does the same without a world until a `restart` decision
  names the worker index it takes over.

The protocol is `gaudi_train.control_protocol`; docs/training.md describes it for the
operator ("Recovery protocol: operator ↔ launcher").
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import queue
import signal
import socket
import threading
import time
from dataclasses import dataclass, replace
from types import FrameType
from typing import Any

from gaudi_train import control_protocol as proto
from gaudi_train import worker_link
from gaudi_train.control_protocol import Decision, Failure, LauncherStatus, Resume
from gaudi_train.control_server import ControlServer
from gaudi_train.env import (
    EXIT_PEER_STOPPED,
    EXIT_WORLD_BROKEN,
    ControlSettings,
    ElasticSettings,
    JobSettings,
)
from gaudi_train.forkserver import ForkServer
from gaudi_train.world_store import PodRecord, World, WorldStore, free_port

log = logging.getLogger(__name__)

DEFAULT_RDZV_PORT = 29400
TICK_SECONDS = 0.02
STOP_GRACE_SECONDS = 30.0  # torchrun's own wait for workers after SIGTERM
FAIL_GRACE_SECONDS = 5.0
REFORK_SPACING_SECONDS = 1.0  # a worker that dies at once is not forked in a tight loop
# A script that has not said it uses the helper API this long after it started is taken
# for one that does not (Lightning, the HF Trainer): it is running once it started.
PLAIN_SCRIPT_SECONDS = 5.0
STORE_RETRY_SECONDS = 0.05  # a store check is one round trip to worker 0

# A local worker, as the launcher sees it.
FORKING = "forking"  # asked the fork server, no hello yet
IDLE = "idle"  # alive outside any world: fresh, or left one (state kept if `valid`)
JOINING = "joining"  # told to join a world
TRAINING = "training"  # in the world (resumed, or a script that does not report)
EXITED = "exited"


@dataclass
class LocalWorker:
    local_rank: int
    serial: int = 0  # which process of this local rank: events of older ones are ignored
    link: socket.socket | None = None
    pid: int | None = None
    state: str = EXITED
    world: int | None = None  # the generation of the world it is in, joins or last left
    rank: int | None = None
    step: int | None = None
    valid: bool = False
    aware: bool = False  # uses the helper API: reports `resumed` and survives a break
    leave_deadline: float | None = None
    forked_at: float = 0.0
    started_at: float | None = None  # the module or script started (its first world)
    returncode: int | None = None


@dataclass
class Target:
    """The world this launcher is forming or running."""

    generation: int
    world_pods: int
    registered: bool = False
    world: World | None = None  # set once formed and the joins sent
    error_reported: bool = False


@dataclass(frozen=True)
class Identity:
    pod: str
    node: str
    pod_ip: str
    pod_generation: int


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_endpoint(text: str | None, default_port: int = DEFAULT_RDZV_PORT) -> tuple[str, int]:
    if not text:
        raise ValueError("no rendezvous endpoint")
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, default_port
    return host.strip("[]"), int(port)


def worker_argv(entry: list[str]) -> list[str]:
    """torchrun's entry (`--module M ...` or `SCRIPT ...`) as `run_as_main` takes it."""
    if entry[:1] == ["--module"]:
        return ["-m", *entry[1:]]
    return list(entry)


class ManagedLauncher:
    """One pod's launcher under the operator's recovery; `run` returns the pod's exit code."""

    def __init__(
        self,
        settings: JobSettings,
        elastic: ElasticSettings,
        control: ControlSettings,
        entry: list[str],
        nproc: int,
        forkserver: ForkServer,
    ) -> None:
        self.settings = settings
        self.elastic = elastic
        self.control = control
        self.argv = worker_argv(entry)
        self.nproc = nproc
        self.forkserver = forkserver
        self.aware_entry = entry[:2] == ["--module", "gaudi_train.worker"]
        self.identity = Identity(
            pod=control.pod_name or socket.gethostname(),
            node=control.node_name,
            pod_ip=elastic.pod_ip or control.address or "127.0.0.1",
            pod_generation=settings.generation,
        )
        self.spare = control.spare
        self.worker_index: int | None = None if control.spare else elastic.worker_index
        self.rdzv: tuple[str, int] | None = None
        if elastic.rdzv_endpoint:
            self.rdzv = parse_endpoint(elastic.rdzv_endpoint)
        elif not control.spare:  # a world of this pod alone: its own store, any free port
            self.rdzv = (self.identity.pod_ip, free_port(self.identity.pod_ip))
        self.store = WorldStore(self.identity.pod_ip)
        self.workers = [LocalWorker(i) for i in range(nproc)]
        self.events: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.target: Target | None = None
        self.failures: list[Failure] = []
        self.resumed: dict[int, Resume] = {}
        self.state = proto.STARTING
        self.message = ""
        self.exit_code: int | None = None  # decided; the loop ends once workers are gone
        self.stop_deadline: float | None = None
        self.last_store_try = 0.0
        self.breaking = False  # the world broke; waiting for every local worker to be out

        # Shared with the control endpoint's threads, under `lock`.
        self.lock = threading.Condition()
        self.accepted = control.in_place_generation  # the newest generation taken
        self.accepted_action = proto.RESTART
        self.pending: Decision | None = None
        self.snapshot: LauncherStatus = self._status(0)
        self.server: ControlServer | None = None

    # -- the control endpoint's side (any thread) ----------------------------------------
    def status_json(self, since: int | None = None, wait: float = 0.0) -> dict[str, Any]:
        deadline = time.monotonic() + wait
        with self.lock:
            while since is not None and self.snapshot.version == since:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.lock.wait(left)
            return self.snapshot.to_json()

    def ready(self) -> bool:
        with self.lock:
            return self.snapshot.ready

    def offer(self, decision: Decision) -> tuple[int, dict[str, Any]]:
        with self.lock:
            generation = decision.in_place_generation
            if generation < self.accepted:
                return 409, {
                    **self.snapshot.to_json(),
                    "error": f"inPlaceGeneration {generation} is older than {self.accepted}",
                }
            if generation == self.accepted:
                if decision.action != self.accepted_action:
                    return 409, {
                        **self.snapshot.to_json(),
                        "error": f"generation {generation} was already decided as "
                        f"{self.accepted_action!r}",
                    }
                return 200, self.snapshot.to_json()
            if decision.action == proto.RESTART:
                problem = self._restart_problem(decision)
                if problem:
                    return 409, {**self.snapshot.to_json(), "error": problem}
            self.accepted = generation
            self.accepted_action = decision.action
            self.pending = decision
            self.snapshot = replace(
                self.snapshot, version=self.snapshot.version + 1, in_place_generation=generation
            )
            self.lock.notify_all()
        self.events.put(("decision",))
        return 202, self.snapshot.to_json()

    def _restart_problem(self, decision: Decision) -> str | None:
        if self.spare and decision.worker_index is None:
            return "workerIndex: required to bring a spare into a world"
        own = self.worker_index
        if not self.spare and decision.worker_index not in (None, own):
            return f"workerIndex: this launcher is worker {own}, not {decision.worker_index}"
        if decision.rendezvous is None and self.rdzv is None:
            return "rendezvous: required, this pod has no PET_RDZV_ENDPOINT"
        return None

    # -- the main loop (main thread) -----------------------------------------------------
    def run(self) -> int:
        self.server = ControlServer(
            self.control.address or self.identity.pod_ip,
            self.control.port or 0,
            self.control.token,
            self,
        )
        self.server.start()
        log.info(
            "operator-managed recovery: control endpoint on %s:%d, %s",
            self.control.address or self.identity.pod_ip,
            self.server.port,
            "spare" if self.spare else f"worker {self.worker_index}",
        )
        threading.Thread(target=self._forkserver_events, daemon=True).start()
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            for worker in self.workers:
                self._fork(worker)
            if not self.spare:
                pods = self.elastic.world_pods or self.elastic.node_range()[1]
                self._begin(self.control.in_place_generation, pods)
            self._publish()
            while not self._done():
                try:
                    event = self.events.get(timeout=TICK_SECONDS)
                except queue.Empty:
                    event = None
                if event is not None:
                    self._handle(event)
                self._tick()
            assert self.exit_code is not None
            return self.exit_code
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._kill_all(signal.SIGKILL)
            self.forkserver.stop()
            self.store.close()
            if self.server is not None:
                self.server.stop()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.events.put(("signal", signum))

    def _forkserver_events(self) -> None:
        while True:
            event = self.forkserver.next_event()
            if event is None:
                self.events.put(("forkserver-gone",))
                return
            self.events.put(("forkserver", event))

    def _link_reader(self, worker: LocalWorker, serial: int, link: socket.socket) -> None:
        while True:
            try:
                data = link.recv(worker_link.MAX_PACKET)
            except OSError:
                data = b""
            if not data:
                return
            self.events.put(("link", worker.local_rank, serial, json.loads(data)))

    def _done(self) -> bool:
        if self.exit_code is None:
            return False
        return all(w.state == EXITED for w in self.workers)

    # -- workers ---------------------------------------------------------------------------
    def _worker_env(self, local_rank: int) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("GAUDI3_CONTROL_TOKEN", None)  # the launcher's secret, not the script's
        env["LOCAL_RANK"] = str(local_rank)
        env["LOCAL_WORLD_SIZE"] = str(self.nproc)
        env.setdefault("USE_LIBUV", "0")  # env:// stores every torch build can serve
        return env

    def _fork(self, worker: LocalWorker) -> None:
        worker.serial += 1
        worker.link = self.forkserver.fork(
            worker.local_rank, self.argv, self._worker_env(worker.local_rank)
        )
        worker.state, worker.pid, worker.world, worker.rank = FORKING, None, None, None
        worker.valid, worker.aware, worker.returncode = False, self.aware_entry, None
        worker.leave_deadline, worker.forked_at = None, time.monotonic()
        worker.started_at = None
        threading.Thread(
            target=self._link_reader, args=(worker, worker.serial, worker.link), daemon=True
        ).start()

    def _send(self, worker: LocalWorker, msg: dict[str, Any]) -> None:
        if worker.link is None:
            return
        with contextlib.suppress(OSError):
            worker.link.send(json.dumps(msg).encode())

    def _signal(self, worker: LocalWorker, sig: int) -> None:
        if worker.pid is not None and worker.state != EXITED:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(worker.pid, sig)

    def _kill_all(self, sig: int) -> None:
        for worker in self.workers:
            self._signal(worker, sig)

    def _ask_to_leave(self, world: int) -> None:
        deadline = time.monotonic() + self.control.leave_timeout
        for worker in self.workers:
            current = worker.world
            if worker.state in (JOINING, TRAINING) and current is not None and current <= world:
                self._send(worker, {"op": "leave", "world": current})
                worker.leave_deadline = worker.leave_deadline or deadline

    # -- events ----------------------------------------------------------------------------
    def _handle(self, event: tuple[Any, ...]) -> None:
        kind = event[0]
        if kind == "forkserver":
            self._on_forkserver(event[1])
        elif kind == "link":
            _, local_rank, serial, msg = event
            worker = self.workers[local_rank]
            if serial == worker.serial:
                self._on_link(worker, msg)
        elif kind == "decision":
            with self.lock:
                decision, self.pending = self.pending, None
            if decision is not None:
                self._apply(decision)
        elif kind == "signal":
            signum = event[1]
            log.warning("got signal %d: stopping the workers", signum)
            self._stop(128 + signum, signal.SIGTERM, STOP_GRACE_SECONDS, forward=signum)
        elif kind == "forkserver-gone" and self.exit_code is None:
            log.error("the fork server is gone: stopping")
            self._stop(1, signal.SIGKILL, 0)
            for worker in self.workers:
                worker.state = EXITED
        self._publish()

    def _on_forkserver(self, event: dict[str, Any]) -> None:
        if event.get("event") == "started":
            worker = self.workers[int(event["localRank"])]
            if worker.state == FORKING and worker.pid is None:
                worker.pid = int(event["pid"])
            return
        pid, returncode = int(event["pid"]), int(event["returncode"])
        worker = next((w for w in self.workers if w.pid == pid), None)
        if worker is None or worker.state == EXITED:
            return
        world = worker.world
        worker.state, worker.returncode, worker.leave_deadline = EXITED, returncode, None
        if worker.link is not None:
            worker.link.close()
            worker.link = None
        if self.exit_code is not None:
            return  # stopping: every exit is expected
        if returncode == 0 and all(w.state == EXITED and w.returncode == 0 for w in self.workers):
            log.info("every local worker finished")
            self._set_state(proto.SUCCEEDED)
            self.exit_code = 0
            return
        if returncode == 0:
            return  # finished; the others follow, or it is replaced in the next world
        code, sig = proto.signal_exit_code(returncode)
        in_world = world is not None and self._in_current_world(world)
        forming = world is None and self.state in (proto.RENDEZVOUS, proto.RUNNING)
        if not (in_world or forming):
            log.warning(
                "local rank %d (pid %d) exited with code %d outside its world",
                worker.local_rank,
                pid,
                code,
            )
            return
        if forming:  # a fresh process died before its world formed: the world cannot
            log.warning("local rank %d exited with code %d before joining", worker.local_rank, code)
            self._record(worker, proto.PROCESS_EXIT, code, sig, "exited before its world formed")
            self._world_broke()
            return
        kind = {EXIT_WORLD_BROKEN: proto.WORLD_BROKEN, EXIT_PEER_STOPPED: proto.PEER_STOPPED}.get(
            code, proto.PROCESS_EXIT
        )
        log.warning(
            "local rank %d (rank %s, pid %d) exited with code %d%s at step %s: %s",
            worker.local_rank,
            worker.rank,
            pid,
            code,
            f" ({sig})" if sig else "",
            worker.step,
            "its world broke" if kind != proto.PROCESS_EXIT else "waiting for the operator",
        )
        self._record(worker, kind, code, sig)
        self._world_broke()

    def _on_link(self, worker: LocalWorker, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        if op == "hello":
            worker.state = IDLE
            worker.pid = worker.pid or int(msg.get("pid", 0)) or None
            if self.spare and all(w.state == IDLE for w in self.workers):
                self._set_state(proto.SPARE, "warm: waiting to be told which worker to replace")
        elif op == "session":
            worker.aware = True
        elif op == "running":
            worker.started_at = time.monotonic()
        elif op == "joined":
            worker.aware = True
        elif op == "resumed":
            worker.aware = True
            worker.state, worker.valid = TRAINING, True
            worker.step = int(msg["step"])
            resume = Resume(
                rank=int(msg["rank"]),
                source=str(msg["source"]),
                step=int(msg["step"]),
                from_rank=msg.get("fromRank"),
            )
            self.resumed[worker.local_rank] = resume
            log.info("rank %d %s", resume.rank, describe_resume(resume))
        elif op == "step":
            worker.step = int(msg["step"])
        elif op == "left":
            self._on_left(worker, msg)

    def _on_left(self, worker: LocalWorker, msg: dict[str, Any]) -> None:
        world = int(msg.get("generation", -1))
        reason = str(msg.get("reason", ""))
        worker.state, worker.leave_deadline = IDLE, None
        worker.valid = bool(msg.get("valid", False))
        worker.step = msg.get("step", worker.step)
        if not self._in_current_world(world) or self.exit_code is not None:
            return  # the teardown of a world this launcher already left behind
        if reason == worker_link.LEFT_BROKEN:
            log.warning(
                "rank %s: its world (generation %d) broke at step %s: %s",
                worker.rank,
                world,
                worker.step,
                msg.get("error", ""),
            )
            self._record(worker, proto.WORLD_BROKEN, None, None, str(msg.get("error", ""))[:500])
        elif reason == worker_link.LEFT_PEER_STOPPED:
            self._record(worker, proto.PEER_STOPPED, None, None, "a peer was told to stop")
            self.message = "a peer stopped (checkpointed): waiting for a decision"
        else:
            self.message = f"world {world} ended ({reason}): waiting for a decision"
        self._world_broke()

    def _in_current_world(self, world: int) -> bool:
        return (
            self.target is not None
            and world == self.target.generation
            and self.state in (proto.RENDEZVOUS, proto.RUNNING, proto.WAITING)
        )

    def _record(
        self,
        worker: LocalWorker,
        kind: str,
        exit_code: int | None,
        sig: str | None,
        message: str = "",
    ) -> None:
        assert self.target is not None
        self.failures.append(
            Failure(
                kind=kind,
                in_place_generation=self.target.generation,
                time=utc_now(),
                pod=self.identity.pod,
                node=self.identity.node,
                worker_index=self.worker_index,
                rank=worker.rank,
                local_rank=worker.local_rank,
                exit_code=exit_code,
                signal=sig,
                step=worker.step,
                message=message,
            )
        )

    def _world_broke(self) -> None:
        """Take the other local workers out of the world; restart nothing; wait.

        The state turns `waiting` only once every local worker is out (left, or its exit
        reaped), so the failures a waiting launcher lists are all it will see: the
        operator judges the root failure from them."""
        if self.target is None or self.state not in (proto.RENDEZVOUS, proto.RUNNING):
            return
        generation = self.target.generation
        if self.state == proto.RENDEZVOUS and self.target.registered and not self.breaking:
            with contextlib.suppress(Exception):
                self.store.abandon(generation, self.identity.pod)
        if not self.breaking:
            self._ask_to_leave(generation)
            self.breaking = True
        self._settle()

    def _settle(self) -> None:
        if self.breaking and not any(w.state in (JOINING, TRAINING) for w in self.workers):
            self.breaking = False
            self._set_state(proto.WAITING, self.message or "world broke: waiting for a decision")

    # -- decisions -------------------------------------------------------------------------
    def _apply(self, decision: Decision) -> None:
        if decision.action == proto.FAIL:
            own = [f for f in self.failures if f.root and f.exit_code is not None]
            code = own[0].exit_code if own else 1
            log.error(
                "the operator decided to fail the job%s: stopping with exit code %d",
                f" ({decision.reason})" if decision.reason else "",
                code,
            )
            assert code is not None
            self._stop(code, signal.SIGTERM, FAIL_GRACE_SECONDS)
            return
        if self.spare:
            self.spare = False
            self.worker_index = decision.worker_index
            log.info("spare: taking over worker index %d", self.worker_index)
        if decision.rendezvous:
            self.rdzv = parse_endpoint(decision.rendezvous)
        assert decision.world_pods is not None
        log.info(
            "decision: restart in place at generation %d with %d pods%s",
            decision.in_place_generation,
            decision.world_pods,
            f" ({decision.reason})" if decision.reason else "",
        )
        self._begin(decision.in_place_generation, decision.world_pods)

    def _begin(self, generation: int, world_pods: int) -> None:
        if self.target is not None and self.target.generation != generation:
            if self.target.registered and self.target.world is None:
                with contextlib.suppress(Exception):
                    self.store.abandon(self.target.generation, self.identity.pod)
            self._ask_to_leave(self.target.generation)
        self.target = Target(generation, world_pods)
        self.breaking = False
        self.failures = []
        self.resumed = {}
        self._set_state(proto.RENDEZVOUS, f"joining the world of generation {generation}")

    def _stop(self, code: int, sig: int, grace: float, forward: int | None = None) -> None:
        if self.exit_code is not None:
            return
        self.exit_code = code
        self.stop_deadline = time.monotonic() + grace
        self._set_state(proto.STOPPING)
        for worker in self.workers:
            if worker.state == FORKING and worker.pid is None:
                worker.state = EXITED  # never started: the fork server's end kills it
            self._signal(worker, forward or sig)

    # -- progress (every tick) ---------------------------------------------------------------
    def _tick(self) -> None:
        now = time.monotonic()
        if self.exit_code is not None:
            if self.stop_deadline is not None and now >= self.stop_deadline:
                self.stop_deadline = None
                self._kill_all(signal.SIGKILL)
            return
        for worker in self.workers:
            if worker.leave_deadline is not None and now >= worker.leave_deadline:
                log.warning(
                    "local rank %d did not leave its world within %.0f s: killing it",
                    worker.local_rank,
                    self.control.leave_timeout,
                )
                worker.leave_deadline = None
                self._signal(worker, signal.SIGKILL)
            # A failed worker is replaced at once, warm for the next world; one that
            # finished only when a new world needs it.
            wanted = worker.returncode != 0 or self.state == proto.RENDEZVOUS
            if (
                worker.state == EXITED
                and wanted
                and now - worker.forked_at >= REFORK_SPACING_SECONDS
            ):
                self._fork(worker)
                self._publish()
            started = worker.started_at
            plain = worker.state == JOINING and not worker.aware
            if plain and started is not None and now - started >= PLAIN_SCRIPT_SECONDS:
                worker.state = TRAINING  # it reports nothing: started is all we know
                self._publish()
        if self.breaking:
            self._settle()
        elif self.state == proto.RENDEZVOUS:
            self._progress_rendezvous(now)

    def _progress_rendezvous(self, now: float) -> None:
        target = self.target
        assert target is not None and self.worker_index is not None
        if target.world is not None:
            if all(w.state == TRAINING and w.world == target.generation for w in self.workers):
                pods = target.world.pods
                first = target.world.first_rank(self.worker_index)
                log.info(
                    "world of generation %d formed: %d pods, %d processes, ranks %d-%d here",
                    target.generation,
                    len(pods),
                    target.world.size,
                    first,
                    first + self.nproc - 1,
                )
                self._set_state(proto.RUNNING)
            return
        if now - self.last_store_try < STORE_RETRY_SECONDS:
            return
        self.last_store_try = now
        assert self.rdzv is not None
        try:
            if not self.store.connect(self.rdzv, host=self.worker_index == 0):
                return
            if not target.registered:
                master = free_port(self.identity.pod_ip) if self.worker_index == 0 else None
                record = PodRecord(
                    self.worker_index, self.nproc, self.identity.pod_ip, self.identity.pod, master
                )
                self.store.register(target.generation, record)
                target.registered = True
            if not all(w.state == IDLE for w in self.workers):
                return  # some are still forking, or leaving the old world
            world = self.store.formed(target.generation, target.world_pods)
        except Exception as exc:  # the store's host is gone (its pod died)
            self.store.forget()
            if not target.error_reported:
                target.error_reported = True
                log.warning("rendezvous store %s:%d: %s", *self.rdzv, exc)
                self.failures.append(
                    Failure(
                        kind=proto.RENDEZVOUS_ERROR,
                        in_place_generation=target.generation,
                        time=utc_now(),
                        pod=self.identity.pod,
                        node=self.identity.node,
                        worker_index=self.worker_index,
                        message=f"{self.rdzv[0]}:{self.rdzv[1]}: {exc}"[:500],
                    )
                )
                self._publish()
            return
        if world is None:
            return
        target.world = world
        first = world.first_rank(self.worker_index)
        master_addr, master_port = world.master
        for worker in self.workers:
            join = worker_link.Join(
                generation=target.generation,
                rank=first + worker.local_rank,
                world_size=world.size,
                local_rank=worker.local_rank,
                local_world_size=self.nproc,
                node_rank=self.worker_index,
                world_pods=target.world_pods,
                rdzv_host=self.rdzv[0],
                rdzv_port=self.rdzv[1],
                master_addr=master_addr,
                master_port=master_port,
                run_id=f"{self.settings.job_name}-{self.identity.pod_generation}",
            )
            worker.state, worker.world, worker.rank = JOINING, target.generation, join.rank
            self._send(worker, join.to_message())
        self._publish()

    # -- status ----------------------------------------------------------------------------
    def _set_state(self, state: str, message: str = "") -> None:
        if state != self.state:
            log.info("state %s -> %s%s", self.state, state, f": {message}" if message else "")
        self.state = state
        self.message = message
        self._publish()

    def _status(self, version: int) -> LauncherStatus:
        target = self.target
        world = target.world if target is not None else None
        steps = [w.step for w in self.workers if w.step is not None]
        index = self.worker_index
        first = world.first_rank(index) if world is not None and index is not None else 0
        return LauncherStatus(
            version=version,
            state=self.state,
            in_place_generation=self.accepted,
            pod=self.identity.pod,
            node=self.identity.node,
            worker_index=self.worker_index,
            spare=self.spare,
            pod_generation=self.identity.pod_generation,
            world_pods=target.world_pods if target else None,
            world_size=world.size if world else None,
            ranks=tuple(range(first, first + self.nproc)) if world else (),
            step=min(steps) if len(steps) == self.nproc else None,
            failures=tuple(self.failures),
            resumed=tuple(self.resumed[k] for k in sorted(self.resumed)),
            exit_code=self.exit_code,
            message=self.message,
        )

    def _publish(self) -> None:
        """Update the status; a change other than the step makes a new version (which
        answers the long polls): progress alone keeps the operator's polls quiet."""
        with self.lock:
            fresh = self._status(self.snapshot.version)
            if replace(fresh, step=None) != replace(self.snapshot, step=None):
                self.snapshot = replace(fresh, version=self.snapshot.version + 1)
                self.lock.notify_all()
            else:
                self.snapshot = fresh


def describe_resume(resume: Resume) -> str:
    if resume.source == "peer":
        return f"resumed from peer rank {resume.from_rank} at step {resume.step}"
    if resume.source == "checkpoint":
        return f"resumed from checkpoint at step {resume.step}"
    return f"started at step {resume.step} (no checkpoint, no peer state)"
