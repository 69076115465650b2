"""The recovery protocol between the operator and every launcher (the contract).

docs/training.md ("Recovery protocol: operator ↔ launcher") describes it in prose; this
module is the same contract in code: the messages, their JSON form, the states and the
failure kinds. Pure and torch-free: the launcher serves it, the operator may import it
(as it imports `gaudi_train.batching`), tests and benchmarks speak it.

- The launcher serves HTTP on `GAUDI3_CONTROL_ADDRESS`:`GAUDI3_CONTROL_PORT` (the pod IP
  by default). `GET /status` returns a `LauncherStatus`; `POST /decision` takes a
  `Decision`. Both need `Authorization: Bearer <GAUDI3_CONTROL_TOKEN>`. `GET /healthz`
  and `GET /readyz` need none (probes).
- The operator is the decider: a launcher whose world broke reports `Failure`s and waits
  in state `waiting` until a `Decision` with a newer `inPlaceGeneration` arrives.
- Level-based: a launcher acknowledges a decision by reporting its generation in
  `inPlaceGeneration`; the same decision posted again is a no-op (200), an older one is
  refused (409), so an operator that crashed re-delivers what its status says.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

API_VERSION = "gaudi3.control/v1"

# -- launcher states ------------------------------------------------------------------------
STARTING = "starting"  # importing and forking workers, before its first world
SPARE = "spare"  # warm (torch and the model imported), outside any world, waits to join
RENDEZVOUS = "rendezvous"  # joining the world of `inPlaceGeneration`
RUNNING = "running"  # every local worker trains in the world of `inPlaceGeneration`
WAITING = "waiting"  # its world broke: `failures` say why; waits for a decision
STOPPING = "stopping"  # SIGTERM or a `fail` decision: stopping its workers, then exits
SUCCEEDED = "succeeded"  # every local worker finished (exit 0); the launcher exits 0
STATES = (STARTING, SPARE, RENDEZVOUS, RUNNING, WAITING, STOPPING, SUCCEEDED)
# States in which `GET /readyz` answers 200 (a readinessProbe's view).
READY_STATES = frozenset({SPARE, RUNNING, SUCCEEDED})

# -- failure kinds --------------------------------------------------------------------------
# A local worker process exited on its own (crash, kill, bad config): a root cause. Its
# exit code is the one the operator's failure rules match (128 + N for signal N).
PROCESS_EXIT = "process-exit"
# A local worker's collective failed because a peer went away: a consequence, not a cause.
WORLD_BROKEN = "world-broken"
# A peer was told to stop (SIGTERM: scale-down, eviction); the world checkpointed and ended.
PEER_STOPPED = "peer-stopped"
# The launcher could not reach the rendezvous store (its host pod is gone).
RENDEZVOUS_ERROR = "rendezvous-error"
KINDS = (PROCESS_EXIT, WORLD_BROKEN, PEER_STOPPED, RENDEZVOUS_ERROR)

# -- decisions ------------------------------------------------------------------------------
RESTART = "restart"  # re-rendezvous in place at the decision's generation
FAIL = "fail"  # stop every worker and exit (the operator's Fail rule)
ACTIONS = (RESTART, FAIL)


class ProtocolError(ValueError):
    """A message that does not follow the protocol; the text names the field."""


def _int(data: Mapping[str, Any], name: str, *, required: bool, minimum: int = 0) -> int | None:
    value = data.get(name)
    if value is None:
        if required:
            raise ProtocolError(f"{name}: required")
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"{name}: expected an integer, got {value!r}")
    if value < minimum:
        raise ProtocolError(f"{name}: expected at least {minimum}, got {value}")
    return value


def _str(data: Mapping[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ProtocolError(f"{name}: expected a string, got {value!r}")
    return value


def _drop_none(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


@dataclass(frozen=True)
class Decision:
    """What the operator tells every launcher of a world (`POST /decision`).

    `restart`: tear the current world down (if it still runs) and re-rendezvous in this
    pod as generation `in_place_generation`, with `world_pods` launchers in the world.
    A spare needs `worker_index` (the index it takes over); a worker, if given one, must
    be told its own. `rendezvous` ("host:port") is where the world's store is, when it
    is not the pod's PET_RDZV_ENDPOINT (a spare that took over worker index 0 hosts it).

    `fail`: stop every local worker and exit (the exit code of the launcher's own failed
    worker, else 1).
    """

    in_place_generation: int
    action: str = RESTART
    world_pods: int | None = None
    worker_index: int | None = None
    rendezvous: str | None = None
    reason: str = ""

    @classmethod
    def from_json(cls, data: Any) -> Decision:
        if not isinstance(data, Mapping):
            raise ProtocolError("decision: expected a JSON object")
        action = data.get("action", RESTART)
        if action not in ACTIONS:
            raise ProtocolError(f"action: expected one of {', '.join(ACTIONS)}, got {action!r}")
        generation = _int(data, "inPlaceGeneration", required=True, minimum=1)
        assert generation is not None
        world_pods = _int(data, "worldPods", required=action == RESTART, minimum=1)
        rendezvous = _str(data, "rendezvous")
        if rendezvous is not None:
            host, sep, port = rendezvous.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ProtocolError(f"rendezvous: expected host:port, got {rendezvous!r}")
        return cls(
            in_place_generation=generation,
            action=action,
            world_pods=world_pods,
            worker_index=_int(data, "workerIndex", required=False),
            rendezvous=rendezvous,
            reason=_str(data, "reason") or "",
        )

    def to_json(self) -> dict[str, Any]:
        return _drop_none(
            {
                "apiVersion": API_VERSION,
                "inPlaceGeneration": self.in_place_generation,
                "action": self.action,
                "worldPods": self.world_pods,
                "workerIndex": self.worker_index,
                "rendezvous": self.rendezvous,
                "reason": self.reason or None,
            }
        )


@dataclass(frozen=True)
class Failure:
    """Why a launcher's world broke, as the launcher saw it."""

    kind: str
    in_place_generation: int
    time: str  # RFC 3339, UTC
    pod: str = ""
    node: str = ""
    worker_index: int | None = None
    rank: int | None = None
    local_rank: int | None = None
    exit_code: int | None = None  # as the kubelet reports a container's: 128 + N for signal N
    signal: str | None = None  # e.g. "SIGKILL"
    step: int | None = None  # the last step this worker completed
    message: str = ""

    @property
    def root(self) -> bool:
        """A cause (a process that exited on its own), not a consequence of one."""
        return self.kind == PROCESS_EXIT

    def to_json(self) -> dict[str, Any]:
        return _drop_none(
            {
                "kind": self.kind,
                "root": self.root,
                "inPlaceGeneration": self.in_place_generation,
                "time": self.time,
                "pod": self.pod,
                "node": self.node,
                "workerIndex": self.worker_index,
                "rank": self.rank,
                "localRank": self.local_rank,
                "exitCode": self.exit_code,
                "signal": self.signal,
                "step": self.step,
                "message": self.message or None,
            }
        )

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Failure:
        kind = data.get("kind")
        if kind not in KINDS:
            raise ProtocolError(f"failures[].kind: unknown {kind!r}")
        generation = _int(data, "inPlaceGeneration", required=True)
        assert generation is not None
        return cls(
            kind=kind,
            in_place_generation=generation,
            time=_str(data, "time") or "",
            pod=_str(data, "pod") or "",
            node=_str(data, "node") or "",
            worker_index=_int(data, "workerIndex", required=False),
            rank=_int(data, "rank", required=False),
            local_rank=_int(data, "localRank", required=False),
            exit_code=_int(data, "exitCode", required=False),
            signal=_str(data, "signal"),
            step=_int(data, "step", required=False),
            message=_str(data, "message") or "",
        )


@dataclass(frozen=True)
class Resume:
    """How a local rank got its state when its world formed."""

    rank: int
    source: str  # "peer", "checkpoint" or "none" (a fresh start at step 0)
    step: int
    from_rank: int | None = None  # the peer's rank

    def to_json(self) -> dict[str, Any]:
        data = {"rank": self.rank, "source": self.source, "step": self.step}
        return _drop_none({**data, "fromRank": self.from_rank})

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Resume:
        return cls(
            rank=_int(data, "rank", required=True) or 0,
            source=_str(data, "source") or "none",
            step=_int(data, "step", required=True) or 0,
            from_rank=_int(data, "fromRank", required=False),
        )


@dataclass(frozen=True)
class LauncherStatus:
    """`GET /status`: one launcher's view. `version` grows with every change but the
    step's, so `GET /status?since=V&wait=S` returns as soon as something other than
    progress changed (or after S s)."""

    version: int
    state: str
    in_place_generation: int  # the newest decision acknowledged (or the pod's start value)
    pod: str = ""
    node: str = ""
    worker_index: int | None = None
    spare: bool = False
    pod_generation: int = 0  # GAUDI3_GENERATION: the pod's restart generation
    world_pods: int | None = None  # launchers in the world of `in_place_generation`
    world_size: int | None = None  # processes in the last world formed
    ranks: tuple[int, ...] = ()  # this pod's ranks in it
    step: int | None = None  # the last step every local worker completed
    failures: tuple[Failure, ...] = ()  # of the world of `in_place_generation`
    resumed: tuple[Resume, ...] = ()
    exit_code: int | None = None  # set once the launcher decided how it exits
    message: str = ""

    @property
    def ready(self) -> bool:
        return self.state in READY_STATES

    def to_json(self) -> dict[str, Any]:
        return _drop_none(
            {
                "apiVersion": API_VERSION,
                "version": self.version,
                "state": self.state,
                "ready": self.ready,
                "inPlaceGeneration": self.in_place_generation,
                "pod": self.pod,
                "node": self.node,
                "workerIndex": self.worker_index,
                "spare": self.spare,
                "podGeneration": self.pod_generation,
                "worldPods": self.world_pods,
                "worldSize": self.world_size,
                "ranks": list(self.ranks),
                "step": self.step,
                "failures": [f.to_json() for f in self.failures],
                "resumed": [r.to_json() for r in self.resumed],
                "exitCode": self.exit_code,
                "message": self.message or None,
            }
        )

    @classmethod
    def from_json(cls, data: Any) -> LauncherStatus:
        if not isinstance(data, Mapping):
            raise ProtocolError("status: expected a JSON object")
        state = data.get("state")
        if state not in STATES:
            raise ProtocolError(f"state: unknown {state!r}")
        return cls(
            version=_int(data, "version", required=True) or 0,
            state=state,
            in_place_generation=_int(data, "inPlaceGeneration", required=True) or 0,
            pod=_str(data, "pod") or "",
            node=_str(data, "node") or "",
            worker_index=_int(data, "workerIndex", required=False),
            spare=bool(data.get("spare", False)),
            pod_generation=_int(data, "podGeneration", required=False) or 0,
            world_pods=_int(data, "worldPods", required=False),
            world_size=_int(data, "worldSize", required=False),
            ranks=tuple(int(r) for r in data.get("ranks", ())),
            step=_int(data, "step", required=False),
            failures=tuple(Failure.from_json(f) for f in data.get("failures", ())),
            resumed=tuple(Resume.from_json(r) for r in data.get("resumed", ())),
            exit_code=_int(data, "exitCode", required=False),
            message=_str(data, "message") or "",
        )


@dataclass(frozen=True)
class WorldView:
    """What the operator reads from all launchers of one world (pure, for its policy)."""

    statuses: Mapping[str, LauncherStatus] = field(default_factory=dict)  # by pod name

    def failures(self) -> list[Failure]:
        return [f for s in self.statuses.values() for f in s.failures]

    def root_failure(self) -> Failure | None:
        return root_failure(self.failures())

    def acknowledged(self, generation: int) -> bool:
        """Every launcher has taken the decision of `generation`."""
        return all(s.in_place_generation >= generation for s in self.statuses.values())

    def running(self, generation: int) -> bool:
        """Every launcher trains in the world of `generation`: the restart is over."""
        return all(
            s.state == RUNNING and s.in_place_generation == generation
            for s in self.statuses.values()
        )


def root_failure(failures: Iterable[Failure]) -> Failure | None:
    """The failure the operator's rules judge: the earliest process exit (a cause);
    without one, the earliest failure of any kind (e.g. only `peer-stopped`)."""
    ordered = sorted(failures, key=lambda f: f.time)
    for failure in ordered:
        if failure.root:
            return failure
    return ordered[0] if ordered else None


def signal_exit_code(returncode: int) -> tuple[int, str | None]:
    """A process's exit as a container's: (exit code, signal name). Python reports a
    death by signal N as -N; the kubelet (and a shell) as 128 + N."""
    if returncode >= 0:
        return returncode, None
    import signal as signals

    number = -returncode
    try:
        name: str | None = signals.Signals(number).name
    except ValueError:
        name = f"SIG{number}"
    return 128 + number, name
