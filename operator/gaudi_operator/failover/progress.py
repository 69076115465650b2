"""The stall clock's pure parts: a job's training step as the operator reads it, when it
last advanced, when status should say so, and the clock rebuilt from Prometheus' history.

Progress lives in memory (and in the operator's metrics), not in status: a training job's
step moves every few seconds, and a status write per move costs every job an API write
and a reconcile pass, for ever. `status.progress` is written on a transition (the first
step, a stall, moving again after one) and at most every `interval` seconds otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from gaudi_operator.api import to_rfc3339

Key = tuple[str, str]  # (namespace, job name)


@dataclass(frozen=True)
class Progress:
    """The job's step as last read, when it last changed, and when it was last read."""

    step: float
    advanced: datetime  # when `step` was first seen (the step's last advance, or later)
    seen: datetime  # the last successful read of Prometheus that covered the job

    def stalled_for(self, since: datetime | None = None) -> float:
        """Seconds the reads show no advance, counted from the later of the last advance and
        `since` (the world's start): a stall must be seen in data, not assumed while
        Prometheus is away."""
        start = max(self.advanced, since) if since is not None else self.advanced
        return (self.seen - start).total_seconds()


def advance(prev: Progress | None, step: float | None, now: datetime) -> Progress | None:
    """One successful read. No series (`step` None) keeps the step and moves `seen`: a job
    whose every process hangs stops being scraped, and that is no progress. A different step
    (larger, or lower after resuming from an older checkpoint) restarts the clock."""
    if step is None or step != step:  # NaN is no reading
        return replace(prev, seen=now) if prev is not None else None
    if prev is None or step != prev.step:
        return Progress(step, now, now)
    return replace(prev, seen=now)


def from_history(points: Sequence[tuple[float, float]], now: datetime) -> Progress | None:
    """The clock rebuilt from a range query of the step (Unix time, value; oldest first):
    the last value, advanced at the first point of its final run of equal values.

    That is never earlier than the real advance (the point shows the value already held),
    so a rebuilt clock cannot find a stall that is not there; it is at most one query step
    (plus a scrape) late, and a step constant over the whole window dates from the window's
    start, so a window of one stall timeout finds an ongoing stall at once."""
    pts = [(t, v) for t, v in points if v == v]
    if not pts:
        return None
    last = pts[-1][1]
    first = pts[-1][0]
    for t, v in reversed(pts):
        if v != last:
            break
        first = t
    return Progress(last, datetime.fromtimestamp(first, UTC), now)


def history_window(timeout_seconds: int, points: int = 100) -> tuple[float, float]:
    """(window, resolution) in seconds for rebuilding a clock with this stall timeout."""
    resolution = max(1.0, timeout_seconds / points)
    return timeout_seconds + resolution, resolution


def stall_due(progress: Progress, ready_since: datetime | None, timeout_seconds: int) -> datetime:
    """When the job counts as stalled unless the step moves: the timeout after the later of
    its last advance and the world becoming ready (a new world gets a full timeout)."""
    start = max(progress.advanced, ready_since) if ready_since is not None else progress.advanced
    return start + timedelta(seconds=timeout_seconds)


# --- what status says ------------------------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    """What `status.progress` says, as this process last wrote (or first read) it."""

    step: float | None
    stalled: bool = False
    at: datetime | None = None  # when written; when first read after a start-up


def should_write(
    progress: Progress,
    recorded: Recorded,
    now: datetime,
    *,
    stalled: bool,
    interval_seconds: float,
) -> bool:
    """Whether this read is worth a `status.progress` write: never when status already has
    the step; on a transition (the job's first step, stalled, moving again after a stall);
    else at most every `interval_seconds` (0: only transitions)."""
    if recorded.step == progress.step:
        return False
    if recorded.step is None or stalled != recorded.stalled:
        return True
    if interval_seconds <= 0:
        return False
    return recorded.at is None or (now - recorded.at).total_seconds() >= interval_seconds


def status_progress(progress: Progress) -> dict[str, object]:
    """The `status.progress` patch: the step, and when it last advanced."""
    return {"step": int(progress.step), "time": to_rfc3339(progress.advanced)}


# --- the clocks of every job --------------------------------------------------------------------


@dataclass
class JobClock:
    uid: str  # the job incarnation: a re-created job starts afresh
    progress: Progress | None = None
    recorded: Recorded = Recorded(None)
    due_enqueued: datetime | None = None  # the stall deadline a pass was already woken for


class ProgressClocks:
    """Every running job's clock, in memory; bounded by the jobs that exist (`retain`)."""

    def __init__(self) -> None:
        self._clocks: dict[Key, JobClock] = {}

    def __len__(self) -> int:
        return len(self._clocks)

    def get(self, key: Key, uid: str) -> JobClock | None:
        clock = self._clocks.get(key)
        return clock if clock is not None and clock.uid == uid else None

    def put(self, key: Key, clock: JobClock) -> None:
        self._clocks[key] = clock

    def retain(self, keys: Iterable[Key]) -> list[Key]:
        """Forget the jobs not in `keys`; returns the forgotten ones."""
        keep = set(keys)
        gone = [k for k in self._clocks if k not in keep]
        for k in gone:
            del self._clocks[k]
        return gone

    def progress(self, namespace: str, name: str, uid: str) -> Progress | None:
        clock = self.get((namespace, name), uid)
        return clock.progress if clock is not None else None
