"""The election and its fence on virtual time: a leader stops acting at its last renewal
(as sent) plus the renew deadline, before any standby may take over, and a paused process
refuses its first write after it resumes, whatever callback runs first.

The event loop here jumps to its next timer instead of sleeping, so seconds of lease time
run in microseconds and every instant is exact.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeVar

import pytest

from gaudi_operator.clients.fence import Fence, FencedWrite
from gaudi_operator.runtime import leader
from gaudi_operator.runtime.leader import (
    Elector,
    LeaderElectionSettings,
    Lease,
    LeaseConflict,
)

pytestmark = pytest.mark.unit

T = TypeVar("T")
L, D, R = 15, 10.0, 2.0  # the chart's defaults


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """Time moves only when every task waits: the loop jumps to its next timer."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        real: selectors.BaseSelector = self._selector  # type: ignore[attr-defined]
        loop = self

        class Jumping:
            def select(self, timeout: float | None = None) -> Any:
                if timeout is None:
                    raise RuntimeError("deadlock: no task ready and no timer")
                loop.now += max(0.0, timeout)
                return real.select(0)

            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

        self._selector = Jumping()  # type: ignore[assignment]

    def time(self) -> float:
        return self.now


@pytest.fixture
def loop() -> Any:
    lp = VirtualTimeLoop()
    yield lp
    lp.close()


def run(loop: VirtualTimeLoop, coro: Coroutine[Any, Any, T]) -> T:
    return loop.run_until_complete(coro)


@dataclass
class Server:
    """The API server's Lease: resourceVersion-guarded, with a record of every write."""

    lease: Lease | None = None
    rv: int = 0
    writes: list[tuple[float, str]] = field(default_factory=list)  # (server time, holder)

    def store(self, lease: Lease) -> Lease:
        self.rv += 1
        self.lease = replace(lease, resource_version=str(self.rv))
        self.writes.append((asyncio.get_running_loop().time(), lease.holder))
        return self.lease


@dataclass
class Client:
    """One candidate's path to the server: `latency` per request; `down` hangs it."""

    server: Server
    latency: float = 0.05
    down: bool = False

    async def _io(self) -> None:
        if self.down:
            await asyncio.Event().wait()
        await asyncio.sleep(self.latency)

    async def read(self) -> Lease | None:
        await self._io()
        return self.server.lease

    async def create(self, lease: Lease) -> Lease:
        await self._io()
        if self.server.lease is not None:
            raise LeaseConflict("exists")
        return self.server.store(lease)

    async def replace(self, lease: Lease) -> Lease:
        await self._io()
        current = self.server.lease
        if current is None or current.resource_version != lease.resource_version:
            raise LeaseConflict("stale")
        return self.server.store(lease)


def candidate(
    loop: VirtualTimeLoop, server: Server, name: str, **timing: Any
) -> tuple[Elector, Client]:
    settings = LeaderElectionSettings(
        namespace="ns",
        name="lease",
        identity=name,
        lease_duration=timing.get("lease", L),
        renew_deadline=timing.get("deadline", D),
        retry_period=timing.get("retry", R),
    )
    api = Client(server)
    return Elector(api, settings, Fence(clock=loop.time)), api


def test_the_deadline_counts_from_when_the_renewal_was_sent(loop: VirtualTimeLoop) -> None:
    server = Server()
    a, api = candidate(loop, server, "a")
    api.latency = 0.7  # each request: the server records the write 1.4 s after sending
    run(loop, asyncio.sleep(3))
    assert run(loop, a.try_acquire_or_renew())
    assert server.writes == [(pytest.approx(4.4), "a")]
    assert a.last_renewal == pytest.approx(3.0)
    assert a.fence.deadline == pytest.approx(3.0 + D)  # not 4.4 + D


def test_a_standby_waits_a_lease_duration_from_when_it_saw_the_last_renewal(
    loop: VirtualTimeLoop,
) -> None:
    server = Server()
    a, _ = candidate(loop, server, "a")
    b, _ = candidate(loop, server, "b")
    assert run(loop, a.try_acquire_or_renew())
    assert not run(loop, b.try_acquire_or_renew())
    seen = b.observed_at
    run(loop, asyncio.sleep(L - 1))
    assert not run(loop, b.try_acquire_or_renew())  # unchanged, but not yet a lease old
    run(loop, asyncio.sleep(1.5))
    assert loop.time() > seen + L
    assert run(loop, b.try_acquire_or_renew())
    assert server.lease is not None and server.lease.holder == "b"
    assert server.lease.transitions == 1
    assert b.leading and b.fence.allows()


@pytest.mark.parametrize(
    ("lease", "deadline", "retry"),
    [(15, 10, 2), (15, 9.5, 2), (6, 3.5, 1)],  # an attempt may straddle the deadline
)
def test_renewals_that_hang_stop_the_leader_before_a_standby_may_take_over(
    loop: VirtualTimeLoop, lease: int, deadline: float, retry: float
) -> None:
    """The Lease path hangs (the leader's other calls may still work): the leader's fence
    closes at its last renewal as sent plus the renew deadline, and the standby takes
    over no sooner than a lease duration after it saw that renewal."""
    server = Server()
    timing = {"lease": lease, "deadline": deadline, "retry": retry}
    a, a_api = candidate(loop, server, "a", **timing)
    b, _ = candidate(loop, server, "b", **timing)
    run(loop, a.acquire())
    closed_at: list[float] = []

    async def scenario() -> str:
        keeper = asyncio.create_task(a.keep())
        standby = asyncio.create_task(b.acquire())
        await asyncio.sleep(7.3)  # a few renewals, then the Lease path hangs
        a_api.down = True
        why = await keeper
        closed_at.append(loop.time())
        await standby
        return why

    why = run(loop, scenario())
    assert "no renewal" in why
    assert not a.leading and not a.fence.allows()
    assert closed_at[0] == pytest.approx(a.last_renewal + deadline)
    takeover = next(t for t, holder in server.writes if holder == "b")
    assert takeover >= a.last_renewal + lease
    # The margin the settings guarantee: more than two retry periods.
    assert takeover - closed_at[0] > 2 * retry


def test_a_lease_held_by_someone_else_ends_leadership_at_once(loop: VirtualTimeLoop) -> None:
    server = Server()
    a, _ = candidate(loop, server, "a")
    run(loop, a.acquire())
    assert server.lease is not None
    server.lease = replace(server.lease, holder="intruder")

    start = loop.time()
    why = run(loop, a.keep())
    assert "held by intruder" in why
    assert loop.time() - start <= R + 0.2  # the next renewal, not the deadline
    assert not a.fence.allows()


def test_a_late_success_never_reopens_the_fence(loop: VirtualTimeLoop) -> None:
    fence = Fence(clock=loop.time)
    fence.hold_until(5.0)
    fence.close()
    fence.hold_until(100.0)
    assert not fence.allows()


def test_a_paused_leader_refuses_its_first_write_on_resume_before_any_timer_runs(
    loop: VirtualTimeLoop,
) -> None:
    """SIGSTOP on virtual time: the loop does not run while the clock moves on. On resume
    the operator's overdue write timer fires before the renewal loop's (it is due first);
    the fence reads the clock itself, so the write is refused all the same. Then the
    whole operator, its background loop included, is cancelled."""
    server = Server()
    a, _ = candidate(loop, server, "a")
    run(loop, a.acquire())
    sent: list[float] = []
    refused: list[float] = []
    cancelled: list[str] = []

    async def background() -> None:
        try:
            while True:
                await asyncio.sleep(0.25)
                try:
                    a.fence.check("PATCH", "/status")
                    sent.append(loop.time())
                except FencedWrite:
                    refused.append(loop.time())
        except asyncio.CancelledError:
            cancelled.append("background")
            raise

    loops: list[asyncio.Task[None]] = []

    async def operator() -> None:
        loops.append(asyncio.create_task(background()))  # as kopf's start-up handler does
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append("operator")
            raise

    leading = loop.create_task(leader.lead(a, operator))
    run(loop, asyncio.sleep(4.9))
    deadline = a.fence.deadline
    assert sent and sent[-1] < deadline
    loop.now += 60  # SIGSTOP ... SIGCONT
    code = run(loop, leading)
    assert code == leader.EXIT_LOST_LEADERSHIP
    assert all(t < deadline for t in sent)
    assert refused and refused[0] >= deadline
    assert sorted(cancelled) == ["background", "operator"]


def test_a_clean_stop_releases_the_lease_within_the_deadline(loop: VirtualTimeLoop) -> None:
    server = Server()
    a, _ = candidate(loop, server, "a")
    run(loop, a.acquire())

    async def operator() -> None:
        await asyncio.sleep(5)  # then kopf returns (SIGTERM)

    assert run(loop, leader.lead(a, operator)) == 0
    assert server.lease is not None and server.lease.holder == ""
    assert not a.fence.allows()  # nothing after the release


def test_no_release_past_the_deadline(loop: VirtualTimeLoop) -> None:
    server = Server()
    a, api = candidate(loop, server, "a")
    run(loop, a.acquire())
    api.down = True
    loop.now += D + 1

    assert not a.fence.allows()
    # The fence refuses the release's write at the HTTP layer; here the fake client just
    # hangs, so only the decision matters: release is not attempted by `lead`'s lost path.
    code = run(loop, leader.lead(a, lambda: asyncio.Event().wait()))
    assert code == leader.EXIT_LOST_LEADERSHIP
    assert server.lease is not None and server.lease.holder == "a"


@pytest.mark.parametrize(
    ("lease", "deadline", "retry"),
    [(15, 10, 2), (6, 3, 1), (10, 6, 1.5)],
)
def test_valid_timings(lease: int, deadline: float, retry: float) -> None:
    LeaderElectionSettings(
        namespace="x", lease_duration=lease, renew_deadline=deadline, retry_period=retry
    ).validate()


@pytest.mark.parametrize(
    ("lease", "deadline", "retry", "says"),
    [
        (10, 7, 2, "= 11 s must be below --lease-duration (10 s)"),  # the old defaults
        (10, 6, 2, "= 10 s must be below --lease-duration (10 s)"),
        (15, 1, 2, "must be at least --retry-period"),
        (15, 10, 0, "above 0 s"),
    ],
)
def test_timings_where_two_leaders_could_act_are_refused(
    lease: int, deadline: float, retry: float, says: str
) -> None:
    le = LeaderElectionSettings(
        namespace="x", lease_duration=lease, renew_deadline=deadline, retry_period=retry
    )
    with pytest.raises(ValueError, match=r"--") as err:
        le.validate()
    assert says in str(err.value)


def test_lease_times_always_carry_six_fractional_digits() -> None:
    # The API server parses MicroTime with a fixed layout; isoformat() drops a zero fraction.
    assert leader._micro_time(datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)) == (
        "2025-01-02T03:04:05.000000Z"
    )
    plus_two = timezone(timedelta(hours=2))
    assert leader._micro_time(datetime(2025, 1, 2, 5, 4, 5, 7, tzinfo=plus_two)) == (
        "2025-01-02T03:04:05.000007Z"
    )
