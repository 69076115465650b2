"""Leader election on a `coordination.k8s.io` Lease, so that of several operator replicas
only one runs kopf's handlers.

The election is kubernetes_asyncio's (`LeaderElection` with a `LeaseLock`); this module
runs the process around it:

1. campaign: while another replica holds the Lease, answer `/healthz` from a small standby
   server, so Kubernetes does not kill the standby;
2. lead: once the Lease is ours, stop the standby server and start the operator (kopf serves
   `/healthz` from then on);
3. lose: when a renewal misses the renew deadline, cancel the operator and exit non-zero at
   once (as controller-runtime does): the Deployment restarts the process as a standby. Never
   act without the Lease;
4. stop: on SIGTERM or Ctrl-C the operator stops cleanly and the Lease is released, so a
   standby takes over at its next retry instead of after the lease duration.

Two gaps of the library are closed here: a renewal that hangs (no API timeout) or raises a
connection error would stall or crash the loop, so each attempt is bounded by the retry
period and any error counts as a failed attempt; and the library never releases the Lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from kubernetes_asyncio import client
from kubernetes_asyncio.leaderelection.electionconfig import Config
from kubernetes_asyncio.leaderelection.leaderelection import LeaderElection
from kubernetes_asyncio.leaderelection.resourcelock.leaselock import LeaseLock

from gaudi_operator.clients import kube
from gaudi_operator.observability import metrics

log = logging.getLogger(__name__)

SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DEFAULT_LEASE_NAME = "gaudi-operator"
EXIT_LOST_LEADERSHIP = 1


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
    lease_duration: int = 10  # whole seconds: the Lease's leaseDurationSeconds
    renew_deadline: float = 7.0
    retry_period: float = 2.0

    def validate(self) -> None:
        """The library's own checks (it raises ValueError), before anything starts."""
        Config(
            lock=object(),  # type: ignore[arg-type]
            lease_duration=self.lease_duration,
            renew_deadline=self.renew_deadline,
            retry_period=self.retry_period,
            onstarted_leading=_never,
            onstopped_leading=_never,
        )


async def _never() -> None:
    return None


class Elector(LeaderElection):
    """kubernetes_asyncio's election, with each attempt bounded and never raising."""

    async def try_acquire_or_renew(self) -> bool:
        try:
            return await asyncio.wait_for(
                super().try_acquire_or_renew(), timeout=self.election_config.retry_period
            )
        except TimeoutError:
            log.warning("lease request timed out")
            return False
        except Exception as err:  # the API unreachable: a failed attempt, not a crash
            log.warning("lease request failed: %s", err)
            return False


async def _standby_server(host: str, port: int, identity: str) -> web.AppRunner:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"leader": False, "identity": identity})

    app = web.Application()
    app.add_routes([web.get("/healthz", healthz)])
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_address=True).start()
    return runner


async def release(api: client.CoordinationV1Api, le: LeaderElectionSettings) -> bool:
    """Give the Lease up if we still hold it (client-go's ReleaseOnCancel): an empty holder
    lets a standby take it at its next retry. Guarded by the resourceVersion just read."""
    try:
        lease = await api.read_namespaced_lease(le.name, le.namespace)
        if lease.spec is None or lease.spec.holder_identity != le.identity:
            return False
        lease.spec.holder_identity = None
        lease.spec.lease_duration_seconds = 1
        lease.spec.renew_time = datetime.now(UTC)
        await api.replace_namespaced_lease(le.name, le.namespace, lease)
    except Exception as err:
        log.warning("could not release the lease %s/%s: %s", le.namespace, le.name, err)
        return False
    log.info("released the lease %s/%s", le.namespace, le.name)
    return True


async def run_as_leader(
    operator: Callable[[asyncio.Event], Awaitable[Any]],
    le: LeaderElectionSettings,
    *,
    kubeconfig: str | None,
    health_host: str,
    health_port: int,
) -> int:
    """Campaign, then run `operator()` while leading; returns the process's exit code."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    metrics.LEADER.set(0)
    # Until kopf runs (it installs its own handlers), a signal ends the campaign.
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    clients = await kube.connect(kubeconfig, pool_size=2)
    leading = asyncio.Event()

    async def hold() -> None:
        leading.set()
        await asyncio.Event().wait()  # cancelled by the library when the Lease is lost

    lock = LeaseLock(le.name, le.namespace, le.identity, clients.api_client)
    config = Config(lock, le.lease_duration, le.renew_deadline, le.retry_period, hold, _never)
    election = asyncio.create_task(Elector(config).run(), name="leader-election")
    standby = await _standby_server(health_host, health_port, le.identity) if health_port else None
    log.info(
        "campaigning for the lease %s/%s as %s (lease %.0fs, renew deadline %.0fs, retry %.0fs)",
        le.namespace,
        le.name,
        le.identity,
        le.lease_duration,
        le.renew_deadline,
        le.retry_period,
    )
    try:
        waiters = [asyncio.create_task(leading.wait()), asyncio.create_task(stop.wait())]
        await asyncio.wait([election, *waiters], return_when=asyncio.FIRST_COMPLETED)
        for w in waiters:
            w.cancel()
        if standby is not None:
            await standby.cleanup()
        if not leading.is_set():
            election.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await election
            return 0 if stop.is_set() else EXIT_LOST_LEADERSHIP
        if stop.is_set():  # asked to stop while winning: don't start, give the Lease back
            election.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await election
            await release(client.CoordinationV1Api(clients.api_client), le)
            return 0
        log.info("leading: the lease %s/%s is held by %s", le.namespace, le.name, le.identity)
        metrics.LEADER.set(1)
        # Our handlers stay until kopf installs its own over them: a signal in between
        # sets `stop`, which kopf also watches, so it stops at once and the Lease is
        # released (removing ours first left a window where SIGTERM killed the process).
        running = asyncio.create_task(_run(lambda: operator(stop)), name="operator")
        await asyncio.wait([election, running], return_when=asyncio.FIRST_COMPLETED)
        if not running.done():
            log.error(
                "lost the lease %s/%s: stopping at once (a standby takes over)",
                le.namespace,
                le.name,
            )
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(running, timeout=5)
            return EXIT_LOST_LEADERSHIP
        metrics.LEADER.set(0)
        election.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await election
        await release(client.CoordinationV1Api(clients.api_client), le)
        return 0 if running.result() else 1
    finally:
        await clients.close()


async def _run(operator: Callable[[], Awaitable[Any]]) -> bool:
    try:
        await operator()
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("the operator failed")
        return False
    return True
