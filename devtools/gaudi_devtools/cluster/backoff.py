"""When the supervisor restarts a component that exited: pure arithmetic, no processes.

Like the kubelet's crash-loop backoff: the first restart comes quickly, each further
exit doubles the wait up to a cap, and a component that then ran for a stable period
starts over from the first delay.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    initial_seconds: float = 1.0
    factor: float = 2.0
    cap_seconds: float = 30.0
    # A run at least this long counts as healthy: the next exit waits initial_seconds again.
    stable_seconds: float = 60.0

    def delay(self, failures: int) -> float:
        """The wait before restart number ``failures`` of a crash loop (1-based)."""
        if failures < 1:
            return 0.0
        # min() before the power would still overflow on a long loop: clamp the exponent.
        exponent = min(failures - 1, 64)
        return min(self.cap_seconds, self.initial_seconds * self.factor**exponent)


@dataclass
class RestartState:
    """One component's crash loop: how many exits in a row without a stable run."""

    backoff: Backoff
    failures: int = 0

    def exited(self, ran_seconds: float) -> float:
        """Record an exit after ``ran_seconds`` of running; return the wait before restart."""
        if ran_seconds >= self.backoff.stable_seconds:
            self.failures = 0
        self.failures += 1
        return self.backoff.delay(self.failures)
