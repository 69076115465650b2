"""Supervised background loops: a loop that raises is logged, counted and restarted after a
capped exponential back-off, instead of dying silently as a bare asyncio task would.

The operator's liveness probe reads `health()`: a loop that failed `max_failures` times within
`window` seconds turns `/healthz` red, so Kubernetes restarts a process whose loops keep
crashing (one restart of a loop is normal and stays green).

`supervise(name, factory)` returns the supervising task; cancelling it cancels the loop, so
callers that cancel their task on stop need no change.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import kopf

from gaudi_operator.observability import metrics

log = logging.getLogger(__name__)

LoopFactory = Callable[[], Coroutine[Any, Any, None]]


@dataclass
class LoopState:
    restarts: int = 0
    consecutive: int = 0  # failures since the loop last ran longer than the cap
    failures: deque[float] = field(default_factory=deque)  # monotonic times, within the window
    last_error: str = ""
    running: bool = False


class Supervisor:
    def __init__(
        self,
        *,
        base_delay: float = 0.5,
        max_delay: float = 30.0,
        max_failures: int = 5,
        window: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Coroutine[Any, Any, None]] = asyncio.sleep,
    ) -> None:
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_failures = max_failures
        self.window = window
        self._clock = clock
        self._sleep = sleep
        self.loops: dict[str, LoopState] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def backoff(self, consecutive: int) -> float:
        """Delay before the restart after `consecutive` failures in a row (1, 2, ...)."""
        return float(min(self.max_delay, self.base_delay * 2 ** max(0, consecutive - 1)))

    def record_failure(self, name: str, err: BaseException, ran_for: float) -> float:
        """Count one failure of `name`; returns the delay before its restart."""
        state = self.loops.setdefault(name, LoopState())
        now = self._clock()
        # A loop that ran for a while before failing starts its back-off over.
        state.consecutive = 1 if ran_for >= self.max_delay else state.consecutive + 1
        state.restarts += 1
        state.failures.append(now)
        self._expire(state, now)
        state.last_error = f"{type(err).__name__}: {err}"
        metrics.LOOP_RESTARTS.labels(loop=name).inc()
        return self.backoff(state.consecutive)

    def _expire(self, state: LoopState, now: float) -> None:
        while state.failures and now - state.failures[0] > self.window:
            state.failures.popleft()

    def failing(self) -> dict[str, str]:
        """Loops that failed `max_failures` times within the window: name -> last error."""
        now = self._clock()
        out = {}
        for name, state in self.loops.items():
            self._expire(state, now)
            if len(state.failures) >= self.max_failures:
                out[name] = state.last_error
        return out

    def health(self) -> dict[str, Any]:
        """The liveness probe's view; raises `LoopsFailing` when a loop keeps failing."""
        failing = self.failing()
        if failing:
            raise LoopsFailing(failing)
        return {name: {"restarts": s.restarts} for name, s in sorted(self.loops.items())}

    def supervise(self, name: str, factory: LoopFactory) -> asyncio.Task[None]:
        """Start the loop `name` once: while its task lives, asking again returns that task
        (kopf retries a start-up handler that raised, and each loop must run once)."""
        running = self._tasks.get(name)
        loop = asyncio.get_running_loop()
        if running is not None and not running.done() and running.get_loop() is loop:
            log.warning("loop %s is running already; not starting it twice", name)
            return running
        self.loops.setdefault(name, LoopState())
        task = asyncio.create_task(self._run(name, factory), name=f"supervised-{name}")
        self._tasks[name] = task
        return task

    async def _run(self, name: str, factory: LoopFactory) -> None:
        state = self.loops[name]
        while True:
            started = self._clock()
            state.running = True
            try:
                await factory()
            except asyncio.CancelledError:
                raise
            except Exception as err:
                delay = self.record_failure(name, err, self._clock() - started)
                log.exception(
                    "loop %s failed (restart %d, next in %.1fs)", name, state.restarts, delay
                )
                state.running = False
                await self._sleep(delay)
                continue
            finally:
                state.running = False
            log.warning("loop %s returned; not restarting it", name)
            return


class LoopsFailing(Exception):
    def __init__(self, failing: dict[str, str]) -> None:
        self.failing = failing
        super().__init__(
            "background loops keep failing: "
            + "; ".join(f"{name} ({err})" for name, err in sorted(failing.items()))
        )


# The operator's one supervisor: every background loop registers here at start-up.
SUPERVISOR = Supervisor()


def supervise(name: str, factory: LoopFactory) -> asyncio.Task[None]:
    return SUPERVISOR.supervise(name, factory)


async def probe(**_: Any) -> dict[str, Any]:
    """kopf's `@kopf.on.probe` handler (registered in app.py): `/healthz` answers 500 while a
    loop keeps failing. PermanentError, because kopf retries any other error of a probe
    handler and the HTTP request would hang in the meantime."""
    try:
        return SUPERVISOR.health()
    except LoopsFailing as err:
        raise kopf.PermanentError(str(err)) from err
