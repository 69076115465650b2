"""Leader election on a `coordination.k8s.io` Lease, so that of several operator replicas
only one acts, and a deposed leader stops acting before anyone else can start.

The election follows client-go's leaderelection (kubernetes/kubernetes,
staging/src/k8s.io/client-go/tools/leaderelection) on the Lease API: read the Lease, take it
when it is free or its holder has not renewed it for a lease duration (counted from when
*we* saw it change, never from the timestamps in it), and write it back guarded by the
resourceVersion just read. Around it, this module runs the process:

1. campaign: while another replica holds the Lease, answer `/healthz` from a small standby
   server, so Kubernetes does not kill the standby;
2. lead: once the Lease is ours, stop the standby server and start the operator (kopf serves
   `/healthz` from then on); renew every retry period;
3. fence: the leader may act until `last renewal sent + renew deadline`, on a clock that
   also counts while the process is paused. The write fence (clients/fence.py) refuses
   every write after that instant by reading the clock itself, and at that instant this
   module cancels kopf and every other task and exits non-zero (the Deployment restarts
   the process as a standby). A Lease seen held by someone else ends leadership at once.
   A standby takes over no sooner than `last renewal + lease duration`; the settings
   keep `renew deadline + 2 x retry period` below the lease duration, so the old leader
   has stopped more than two retry periods before (docs/high-availability.md);
4. stop: on SIGTERM or Ctrl-C the operator stops cleanly and the Lease is released, so a
   standby takes over at its next retry instead of after the lease duration.

Each renewal is measured from the moment its first request was *sent*: the API server may
have recorded it any time after, and the standby counts from when it saw the change, so
the leader's deadline can only come early, never late.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from gaudi_operator.clients import kube
from gaudi_operator.clients.fence import FENCE, Fence
from gaudi_operator.observability import metrics

log = logging.getLogger(__name__)

SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DEFAULT_LEASE_NAME = "gaudi-operator"
EXIT_LOST_LEADERSHIP = 1
# Tasks get this long to finish after leadership is lost (they cannot write any more).
HALT_GRACE_SECONDS = 5.0


def default_namespace() -> str:
    """The pod's own namespace in a cluster, else "default"."""
    try:
        return SA_NAMESPACE_FILE.read_text().strip() or "default"
    except OSError:
        return "default"


def default_identity() -> str:
    # The host name (the pod name in a cluster) says which replica leads; the suffix keeps
    # two processes on one host apart.
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


@dataclass
class LeaderElectionSettings:
    enabled: bool = True
    namespace: str = field(default_factory=default_namespace)
    name: str = DEFAULT_LEASE_NAME
    identity: str = field(default_factory=default_identity)
    # controller-runtime's and kube-controller-manager's defaults: 10 + 2 x 2 < 15.
    lease_duration: int = 15  # whole seconds: the Lease's leaseDurationSeconds
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    # Test/ops hook: the election's client dials this address instead of the kubeconfig's
    # (the same API server behind a proxy; its certificate is checked as usual).
    server: str | None = None

    def validate(self) -> None:
        """Refuse timings under which a deposed leader could still act after a standby
        took over. Raises ValueError naming the `gaudi3 operator` flags."""
        if self.lease_duration < 1 or self.retry_period <= 0 or self.renew_deadline <= 0:
            raise ValueError(
                "--lease-duration must be at least 1 s, --renew-deadline and --retry-period "
                "above 0 s"
            )
        if self.renew_deadline < self.retry_period:
            raise ValueError(
                f"--renew-deadline ({self.renew_deadline:g} s) must be at least "
                f"--retry-period ({self.retry_period:g} s): the leader needs one renewal "
                "attempt before it gives up"
            )
        margin = self.renew_deadline + 2 * self.retry_period
        if margin >= self.lease_duration:
            raise ValueError(
                f"--renew-deadline ({self.renew_deadline:g} s) + 2 x --retry-period "
                f"({self.retry_period:g} s) = {margin:g} s must be below --lease-duration "
                f"({self.lease_duration} s): a deposed leader must stop acting well before "
                "a standby may take over (e.g. 15, 10 and 2)"
            )


# --- the Lease, as the election sees it ---------------------------------------------------


@dataclass(frozen=True)
class Lease:
    holder: str  # "" when free
    duration: int  # seconds
    transitions: int = 0
    acquire_time: datetime | None = None
    renew_time: datetime | None = None
    resource_version: str = ""

    def record(self) -> tuple[object, ...]:
        """What changes when a holder renews or hands over (not the resourceVersion)."""
        return (self.holder, self.duration, self.transitions, self.acquire_time, self.renew_time)


class LeaseConflict(Exception):
    """The Lease changed since we read it (409), or was created by someone else."""


class LeaseAPI(Protocol):
    async def read(self) -> Lease | None: ...  # None: no Lease yet

    async def create(self, lease: Lease) -> Lease: ...

    async def replace(self, lease: Lease) -> Lease: ...  # guarded by lease.resource_version


def _micro_time(t: datetime | None) -> Any:
    """MicroTime as the API server parses it (RFC 3339 with exactly six fractional digits):
    `isoformat()` drops the fraction when it is zero, and the server would refuse that."""
    return None if t is None else t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


class KubeLeases:
    """LeaseAPI on the real API server (the Lease as JSON: coordination.k8s.io/v1)."""

    def __init__(self, clients: kube.Clients, namespace: str, name: str) -> None:
        self.clients, self.namespace, self.name = clients, namespace, name
        self.collection = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"

    @staticmethod
    def _lease(obj: dict[str, Any]) -> Lease:
        spec = obj.get("spec") or {}
        return Lease(
            holder=spec.get("holderIdentity") or "",
            duration=spec.get("leaseDurationSeconds") or 0,
            transitions=spec.get("leaseTransitions") or 0,
            acquire_time=_parse_time(spec.get("acquireTime")),
            renew_time=_parse_time(spec.get("renewTime")),
            resource_version=(obj.get("metadata") or {}).get("resourceVersion") or "",
        )

    def _body(self, lease: Lease) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if lease.resource_version:
            meta["resourceVersion"] = lease.resource_version
        spec: dict[str, Any] = {
            "holderIdentity": lease.holder or None,
            "leaseDurationSeconds": lease.duration,
            "leaseTransitions": lease.transitions,
            "acquireTime": _micro_time(lease.acquire_time),
            "renewTime": _micro_time(lease.renew_time),
        }
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": meta,
            # Unset fields are left out, as the generated model's serializer left them.
            "spec": {k: v for k, v in spec.items() if v is not None},
        }

    async def read(self) -> Lease | None:
        try:
            return self._lease(await self.clients.get(f"{self.collection}/{self.name}"))
        except kube.ApiError as err:
            if err.status == 404:
                return None
            raise

    async def create(self, lease: Lease) -> Lease:
        try:
            created = await self.clients.request("POST", self.collection, body=self._body(lease))
        except kube.ApiError as err:
            if err.status == 409:
                raise LeaseConflict("the Lease was created by someone else") from err
            raise
        return self._lease(created)

    async def replace(self, lease: Lease) -> Lease:
        try:
            done = await self.clients.request(
                "PUT", f"{self.collection}/{self.name}", body=self._body(lease)
            )
        except kube.ApiError as err:
            if err.status == 409:
                raise LeaseConflict("the Lease changed since it was read") from err
            raise
        return self._lease(done)


# --- the election ---------------------------------------------------------------------


class LostLease(Exception):
    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def _wall() -> datetime:
    return datetime.now(UTC)


class Elector:
    """One candidate. `acquire()` returns once the Lease is ours; `keep()` renews it and
    returns when leadership ends, with the fence closed.

    Time comes from the fence's clock; tests run it on an event loop with virtual time."""

    def __init__(
        self,
        leases: LeaseAPI,
        settings: LeaderElectionSettings,
        fence: Fence,
        *,
        wall: Callable[[], datetime] = _wall,
    ) -> None:
        self.leases = leases
        self.le = settings
        self.fence = fence
        self.clock = fence.clock
        self.wall = wall
        self.leading = False
        self.observed: Lease | None = None
        self.observed_at = 0.0  # our clock when `observed` last changed
        self.last_renewal = 0.0  # our clock when the last successful renewal was sent

    async def try_acquire_or_renew(self) -> bool:
        """One attempt. True: the Lease is ours until `sent + renew deadline`. Raises
        LostLease when leading and someone else holds it."""
        sent = self.clock()  # before the first request: the server records it later
        lease = await self.leases.read()
        if lease is None:
            if self.leading:
                raise LostLease("the Lease was deleted")
            new = Lease(
                holder=self.le.identity,
                duration=self.le.lease_duration,
                acquire_time=self.wall(),
                renew_time=self.wall(),
            )
            return self._won(await self.leases.create(new), sent)
        if self.observed is None or lease.record() != self.observed.record():
            self.observed, self.observed_at = lease, self.clock()
        mine = lease.holder == self.le.identity
        if self.leading and not mine:
            raise LostLease(f"the Lease is held by {lease.holder or 'nobody'}")
        if lease.holder and not mine and self.clock() < self.observed_at + lease.duration:
            return False  # held, and renewed within its duration as far as we saw
        now = self.wall()
        ours = replace(
            lease,
            holder=self.le.identity,
            duration=self.le.lease_duration,
            renew_time=now,
            acquire_time=lease.acquire_time if mine else now,
            transitions=lease.transitions if mine else lease.transitions + 1,
        )
        return self._won(await self.leases.replace(ours), sent)

    def _won(self, lease: Lease, sent: float) -> bool:
        self.observed, self.observed_at = lease, self.clock()
        self.leading = True
        self.last_renewal = sent
        self.fence.hold_until(sent + self.le.renew_deadline)
        return True

    async def _attempt(self, within: float) -> bool:
        """One attempt bounded by `within` seconds; an error is a failed attempt."""
        try:
            async with asyncio.timeout(max(0.0, within)):
                return await self.try_acquire_or_renew()
        except LostLease:
            raise
        except TimeoutError:
            log.warning("lease request timed out after %.1fs", within)
        except Exception as err:  # the API unreachable, a conflict: a failed attempt
            log.warning("lease request failed: %s", err)
        return False

    async def acquire(self) -> None:
        """Campaign until the Lease is ours."""
        while True:
            started = self.clock()
            if await self._attempt(self.le.retry_period):
                return
            await asyncio.sleep(max(0.0, started + self.le.retry_period - self.clock()))

    async def keep(self) -> str:
        """Renew every retry period while the fence holds; returns why leadership ended,
        with the fence closed. Cancelled (a clean stop), it leaves the fence as it is: the
        Lease is still ours to release until the deadline."""
        last_try = self.last_renewal
        while True:
            wake = min(last_try + self.le.retry_period, self.fence.deadline)
            await asyncio.sleep(max(0.0, wake - self.clock()))
            now = self.clock()
            if not self.fence.allows():
                why = (
                    f"no renewal in {now - self.last_renewal:.1f}s "
                    f"(renew deadline {self.le.renew_deadline:g}s)"
                )
                break
            last_try = now
            # An attempt still in flight at the deadline is abandoned with it.
            try:
                await self._attempt(min(self.le.retry_period, self.fence.remaining()))
            except LostLease as lost:
                why = lost.why
                break
        self.leading = False
        self.fence.close()
        return why


# --- the process around it ------------------------------------------------------------


async def _standby_server(host: str, port: int, identity: str) -> web.AppRunner:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"leader": False, "identity": identity})

    app = web.Application()
    app.add_routes([web.get("/healthz", healthz)])
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_address=True).start()
    return runner


async def release(leases: LeaseAPI, identity: str, wall: Callable[[], datetime] = _wall) -> bool:
    """Give the Lease up if we still hold it (client-go's ReleaseOnCancel): an empty holder
    lets a standby take it at its next retry. Guarded by the resourceVersion just read, and
    by the fence (past the renew deadline it is not ours to give)."""
    try:
        lease = await leases.read()
        if lease is None or lease.holder != identity:
            return False
        await leases.replace(replace(lease, holder="", duration=1, renew_time=wall()))
    except Exception as err:
        log.warning("could not release the lease: %s", err)
        return False
    log.info("released the lease")
    return True


async def _halt(grace: float = HALT_GRACE_SECONDS) -> None:
    """Cancel every other task of the process: kopf, the controller, every loop."""
    me = asyncio.current_task()
    others = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
    for task in others:
        task.cancel()
    if others:
        _, stuck = await asyncio.wait(others, timeout=grace)
        if stuck:
            names = sorted(_task_name(t) for t in stuck)
            log.warning(
                "%d tasks still running after %.0fs (they cannot write): %s",
                len(stuck),
                grace,
                ", ".join(names),
            )


def _task_name(task: asyncio.Task[Any]) -> str:
    coro = task.get_coro()
    return f"{task.get_name()} ({getattr(coro, '__qualname__', coro)})"


async def _wait_first(*aws: Awaitable[Any]) -> None:
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


async def run_as_leader(
    operator: Callable[[asyncio.Event], Coroutine[Any, Any, Any]],
    le: LeaderElectionSettings,
    *,
    kubeconfig: str | None,
    health_host: str,
    health_port: int,
    fence: Fence = FENCE,
) -> int:
    """Campaign, then run `operator(stop)` while leading; returns the process's exit code."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    metrics.LEADER.set(0)
    # Until kopf runs (it installs its own handlers), a signal ends the campaign.
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    clients = await kube.connect(kubeconfig, pool_size=2, component="lease", server=le.server)
    leases = KubeLeases(clients, le.namespace, le.name)
    elector = Elector(leases, le, fence)
    standby = await _standby_server(health_host, health_port, le.identity) if health_port else None
    log.info(
        "campaigning for the lease %s/%s as %s (lease %ds, renew deadline %gs, retry %gs)",
        le.namespace,
        le.name,
        le.identity,
        le.lease_duration,
        le.renew_deadline,
        le.retry_period,
    )
    try:
        campaign = asyncio.create_task(elector.acquire(), name="leader-campaign")
        await _wait_first(asyncio.shield(campaign), stop.wait())
        if standby is not None:
            await standby.cleanup()
        if not campaign.done():
            campaign.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await campaign
        elif campaign.exception() is not None:
            raise campaign.exception()  # type: ignore[misc]
        if not elector.leading:
            return 0
        if stop.is_set():  # asked to stop while winning: don't start, give the Lease back
            await release(leases, le.identity)
            return 0
        # Our handlers stay until kopf installs its own over them: a signal in between
        # sets `stop`, which kopf also watches, so it stops at once and the Lease is
        # released (removing ours first left a window where SIGTERM killed the process).
        log.info("leading: the lease %s/%s is held by %s", le.namespace, le.name, le.identity)
        return await lead(elector, lambda: operator(stop))
    finally:
        fence.close()
        await clients.close()


async def lead(elector: Elector, operator: Callable[[], Awaitable[Any]]) -> int:
    """Run `operator()` while the Lease is ours; returns the process's exit code."""
    le, fence = elector.le, elector.fence
    metrics.LEADER.set(1)
    keeper = asyncio.create_task(elector.keep(), name="leader-renewal")
    running = asyncio.create_task(_run(operator), name="operator")
    await asyncio.wait([keeper, running], return_when=asyncio.FIRST_COMPLETED)
    metrics.LEADER.set(0)
    if keeper.done():
        err = keeper.exception()  # keep() closed the fence, or failed: close it here
        fence.close()
        log.error(
            "lost the lease %s/%s: %s; stopping at once (a standby takes over)",
            le.namespace,
            le.name,
            f"renewal failed: {err!r}" if err else keeper.result(),
        )
        await _halt()
        return EXIT_LOST_LEADERSHIP
    keeper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await keeper
    # The only write after kopf stopped; the fence refuses it past the deadline.
    await release(elector.leases, le.identity)
    fence.close()
    return 0 if running.result() else 1


async def _run(operator: Callable[[], Awaitable[Any]]) -> bool:
    try:
        await operator()
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("the operator failed")
        return False
    return True
