"""A stand-in for the operator's side of the recovery protocol, for the training tests.

It launches a world of launcher processes as the operator's pods would run them (each
on its own loopback address, worker 0 hosting the store), reads their statuses and
posts decisions with `gaudi_train.control_client`, the way docs/training.md ("Recovery
protocol") asks the operator to: find the root failure, apply the Fail rules, bump the
in-place generation and deliver it until every launcher has taken it.
"""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gaudi_train.control_client import ControlClient, Unreachable
from gaudi_train.control_protocol import (
    FAIL,
    RESTART,
    Decision,
    Failure,
    LauncherStatus,
    root_failure,
)

from .conftest import Run, clean_env, start_launcher


def free_port(*addrs: str) -> int:
    """A port free on every address in `addrs`."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind((addrs[0], 0))
            port = int(probe.getsockname()[1])
        try:
            for addr in addrs[1:]:
                with socket.socket() as other:
                    other.bind((addr, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no common free port")


@dataclass
class Pod:
    name: str
    ip: str
    index: int | None  # None: a spare
    run: Run
    client: ControlClient

    def status(self) -> LauncherStatus | None:
        try:
            return self.client.status()
        except Unreachable:
            return None


@dataclass
class FakeOperator:
    token: str
    pods: list[Pod] = field(default_factory=list)
    generation: int = 0

    def status(self) -> dict[str, LauncherStatus | None]:
        return {pod.name: pod.status() for pod in self.pods}

    def pod(self, name: str) -> Pod:
        return next(p for p in self.pods if p.name == name)

    def wait_for(
        self,
        predicate: Callable[[dict[str, LauncherStatus | None]], bool],
        what: str,
        timeout: float = 90,
    ) -> dict[str, LauncherStatus | None]:
        deadline = time.monotonic() + timeout
        last: dict[str, LauncherStatus | None] = {}
        while time.monotonic() < deadline:
            last = self.status()
            if predicate(last):
                return last
            time.sleep(0.1)
        tails = "\n".join(f"--- {p.name}\n{p.run.tail(25)}" for p in self.pods)
        raise AssertionError(f"timed out waiting for {what}: {last}\n{tails}")

    def wait_states(self, state: str, names: list[str], generation: int | None = None) -> None:
        def reached(statuses: dict[str, LauncherStatus | None]) -> bool:
            for name in names:
                s = statuses.get(name)
                if s is None or s.state != state:
                    return False
                if generation is not None and s.in_place_generation != generation:
                    return False
            return True

        self.wait_for(reached, f"{names} in state {state}")

    def failures(self) -> list[Failure]:
        return [f for s in self.status().values() if s is not None for f in s.failures]

    def root(self) -> Failure | None:
        return root_failure(self.failures())

    def deliver(self, decision: Decision, pod: Pod) -> int:
        code, _ = pod.client.decide(decision)
        return code

    def restart(self, world: dict[str, int], reason: str = "") -> int:
        """Bump the generation and deliver `restart` to the named pods, with the worker
        index each takes (a spare's new one); returns the generation."""
        self.generation += 1
        for name, index in world.items():
            pod = self.pod(name)
            decision = Decision(
                self.generation,
                RESTART,
                world_pods=len(world),
                worker_index=index if pod.index is None else None,
                reason=reason,
            )
            code = self.deliver(decision, pod)
            assert code in (200, 202), (name, code)
        return self.generation

    def fail(self, reason: str) -> None:
        self.generation += 1
        for pod in self.pods:
            if pod.status() is not None:
                pod.client.decide(Decision(self.generation, FAIL, reason=reason))


def launch_world(
    tmp_path: Path,
    pods: int,
    args: tuple[str, ...],
    nproc: int = 1,
    spares: int = 0,
    subnet: str = "127.0.41",
    extra_env: dict[str, str] | None = None,
) -> FakeOperator:
    """Start `pods` launchers (worker 0..pods-1) and `spares` spare launchers, as the
    operator would create them, each with its own address, all on one control port."""
    token = secrets.token_hex(16)
    addrs = [f"{subnet}.{i + 1}" for i in range(pods + spares)]
    control_port = free_port(*addrs)
    rdzv_port = free_port(addrs[0])
    op = FakeOperator(token)
    for i, addr in enumerate(addrs):
        spare = i >= pods
        name = f"spare-{i - pods}" if spare else f"worker-{i}"
        env = clean_env(
            PET_NNODES=f"{pods}:{pods}",
            PET_RDZV_ENDPOINT=f"{addrs[0]}:{rdzv_port}",
            GAUDI3_WORLD_PODS=str(pods),
            GAUDI3_POD_IP=addr,
            GAUDI3_POD_NAME=name,
            GAUDI3_CONTROL_PORT=str(control_port),
            GAUDI3_CONTROL_TOKEN=token,
            GAUDI3_JOB_NAME="recovery",
            **({"GAUDI3_SPARE": "1"} if spare else {"GAUDI3_WORKER_INDEX": str(i)}),
            **(extra_env or {}),
        )
        run = start_launcher(
            ("--nproc", str(nproc), *args), tmp_path / f"{name}.log", tmp_path, env
        )
        client = ControlClient(addr, control_port, token)
        op.pods.append(Pod(name, addr, None if spare else i, run, client))
    return op
