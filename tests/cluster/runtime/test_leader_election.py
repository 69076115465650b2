"""Leader election between real operator processes on the real API server: only the Lease
holder reconciles, a standby takes over after the leader is SIGKILLed, a clean stop gives
the Lease back, and a leader that loses its Lease exits non-zero.

The fencing tests prove from the API server's own record (its audit log, where each
replica's User-Agent names it) that nothing a deposed leader sends reaches the server
after the standby took the Lease: a leader paused with SIGSTOP and resumed, and a leader
whose Lease traffic is dropped while its other calls still go through.

Each test uses its own Lease and watches only its own namespace, so an operator that other
tests run never counts here.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from cluster.gtj import OperatorProcess, create_job, get_job, job_body
from conftest import wait_for
from gaudi_devtools.cluster import audit
from gaudi_devtools.cluster.faultproxy import FaultProxy

# Short, and valid: 3 + 2 x 1 < 6. The deposed leader stops 3 s after its last renewal;
# the standby may take over 6 s after it.
LEASE, DEADLINE, RETRY = "6", "3", "1"


@pytest.fixture(scope="module")
def leases(api_client: Any) -> Any:
    from kubernetes import client

    return client.CoordinationV1Api(api_client)


class Candidate(OperatorProcess):
    """An operator with leader election, its Lease and namespace its own."""

    def __init__(self, cluster: Any, log: Path, namespace: str, lease: str) -> None:
        super().__init__(Path(cluster.kubeconfig), log, leader_elect=True)
        self.args = (
            "--namespace",
            namespace,
            "--leader-election-namespace",
            namespace,
            # Shorter than the defaults (15, 10, 2 s): a takeover and a deposed leader's exit
            # wait these out; three attempts before the deadline, so one slow renewal is
            # no lost lease.
            "--lease-duration",
            LEASE,
            "--renew-deadline",
            DEADLINE,
            "--retry-period",
            RETRY,
            "--leader-election-id",
            lease,  # last: lease_name() reads it there
        )

    def start(self, *extra: str, wait: bool = True) -> None:
        super().start(*self.args, *extra, wait=wait)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def identity(self) -> str:
        found = re.search(r"campaigning for the lease \S+ as (\S+)", self.text())
        assert found, self.tail()
        return found.group(1)

    def leading(self) -> bool:
        return "leading: the lease" in self.text()

    def reconciled(self, namespace: str, job: str) -> bool:
        # The reconciler logs every event it posts on a job ("<ns>/<job>: <reason> ...").
        return f"{namespace}/{job}: " in self.text()

    def user_agent(self) -> str:
        """The prefix of every User-Agent this process sends (kopf, operator, lease)."""
        return f"gaudi-operator/{self.identity()} ("

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)


@pytest.fixture
def candidates(
    cluster: Any, crd: Path, namespace: str, tmp_path: Path, operator: Any
) -> Iterator[tuple[Candidate, Candidate]]:
    # The session's operator watches every namespace: it would race the candidates.
    operator.stop()
    lease = f"le-{uuid.uuid4().hex[:6]}"
    a = Candidate(cluster, tmp_path / "a.log", namespace, lease)
    b = Candidate(cluster, tmp_path / "b.log", namespace, lease)
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()
        operator.start()


def holder(leases: Any, namespace: str, name: str) -> str | None:
    lease = leases.read_namespaced_lease(name, namespace)
    return lease.spec.holder_identity if lease.spec else None


def lease_name(c: Candidate) -> str:
    return c.args[-1]


def has_status(custom: Any, ns: str, name: str) -> bool:
    return bool((get_job(custom, ns, name).get("status") or {}).get("phase"))


def test_only_the_leader_acts_and_a_standby_takes_over_after_a_sigkill(
    candidates: tuple[Candidate, Candidate], custom: Any, leases: Any, namespace: str
) -> None:
    a, b = candidates
    a.start()
    wait_for(a.leading, timeout=60, what="the first operator to lead")
    b.start()  # healthy as a standby: /healthz answers before it leads
    wait_for(lambda: "campaigning" in b.text(), timeout=30, what="the standby to campaign")
    assert holder(leases, namespace, lease_name(a)) == a.identity()

    create_job(custom, namespace, job_body("first", hpusPerWorker=1))
    wait_for(lambda: has_status(custom, namespace, "first"), timeout=60, what="status of first")
    wait_for(lambda: a.reconciled(namespace, "first"), timeout=30, what="the leader's pass")
    assert not b.leading() and not b.reconciled(namespace, "first"), b.tail()
    assert b.proc is not None and b.proc.poll() is None  # the standby lives on
    # Both are healthy scrape targets; the gauge says which one leads.
    assert "gaudi_operator_leader 1.0" in a.metrics()
    assert "gaudi_operator_leader 0.0" in b.metrics()

    a.kill()
    create_job(custom, namespace, job_body("second", hpusPerWorker=1))
    wait_for(b.leading, timeout=90, what="the standby to take the lease")
    wait_for(lambda: has_status(custom, namespace, "second"), timeout=60, what="status of second")
    wait_for(lambda: b.reconciled(namespace, "second"), timeout=30, what="the new leader's pass")
    assert holder(leases, namespace, lease_name(b)) == b.identity()
    assert "gaudi_operator_leader 1.0" in b.metrics()
    # kopf's /healthz replaced the standby's on the same port, with the loops' probe.
    health = httpx.get(f"http://127.0.0.1:{b.health_port}/healthz", timeout=15).json()
    assert "resync" in health["loops"]


def test_a_clean_stop_releases_the_lease_for_the_standby(
    candidates: tuple[Candidate, Candidate], leases: Any, namespace: str
) -> None:
    a, b = candidates
    a.start()
    wait_for(a.leading, timeout=60, what="the first operator to lead")
    a.stop()  # SIGTERM
    assert a.proc is not None and a.proc.returncode == 0, a.tail()
    assert holder(leases, namespace, lease_name(a)) in (None, "")
    assert "released the lease" in a.text()
    # A newcomer needs no lease duration to pass: an empty holder is free at once.
    b.start()
    wait_for(b.leading, timeout=60, what="the newcomer to lead")


def test_a_leader_that_loses_its_lease_exits_non_zero(
    candidates: tuple[Candidate, Candidate], leases: Any, namespace: str
) -> None:
    a, _ = candidates
    a.start()
    wait_for(a.leading, timeout=60, what="the operator to lead")
    # Someone else holds the Lease now (as after a partition): renewals fail until the
    # renew deadline, then the process must stop acting and exit.
    name = lease_name(a)
    lease = leases.read_namespaced_lease(name, namespace)
    lease.spec.holder_identity = "intruder"
    lease.spec.renew_time = datetime.now(UTC)
    lease.spec.lease_duration_seconds = 3600
    leases.replace_namespaced_lease(name, namespace, lease)
    assert a.proc is not None
    wait_for(lambda: a.proc.poll() is not None, timeout=60, what="the deposed leader to exit")
    assert a.proc.returncode == 1, a.tail()
    assert "lost the lease" in a.text()
    assert holder(leases, namespace, name) == "intruder"


# --- fencing, from the API server's audit log ----------------------------------------------


@pytest.fixture
def audit_log(cluster: Any) -> Path:
    if not (cluster.settings and cluster.settings.audit_log):
        pytest.skip("this cluster's API server keeps no audit log (gaudi3 cluster up --audit-log)")
    return Path(cluster.audit_log)


def writes_by(events: list[audit.Event], who: Candidate) -> list[audit.Event]:
    prefix = who.user_agent()
    return [e for e in events if e.user_agent.startswith(prefix)]


def takeover(audit_log: Path, lease: str, new: Candidate) -> audit.Event:
    """The new holder's first successful write of the Lease, as the server recorded it."""

    def found() -> audit.Event | None:
        mine = writes_by(audit.read(audit_log), new)
        won = [e for e in mine if e.resource == "leases" and e.name == lease and e.code < 300]
        return won[0] if won else None

    return wait_for(found, timeout=30, what="the takeover in the audit log")  # type: ignore[return-value]


def assert_nothing_after_takeover(
    audit_log: Path, lease: str, old: Candidate, new: Candidate
) -> tuple[list[audit.Event], audit.Event]:
    took = takeover(audit_log, lease, new)
    events = audit.read(audit_log)
    late = [e for e in writes_by(events, old) if e.received >= took.received]
    assert not late, f"the deposed leader wrote after the takeover at {took}:\n" + "\n".join(
        map(str, late)
    )
    return events, took


def suspended_job(custom: Any, namespace: str, name: str) -> None:
    # A Service, an event and a status per job, no pods: writes without using HPUs.
    create_job(custom, namespace, job_body(name, hpusPerWorker=1, suspend=True))


def wait_statuses(custom: Any, namespace: str, names: list[str]) -> None:
    wait_for(
        lambda: all(has_status(custom, namespace, n) for n in names),
        timeout=90,
        what=f"status of {len(names)} jobs",
    )


def lead_and_write(
    a: Candidate, b: Candidate, custom: Any, namespace: str, audit_log: Path, *extra: str
) -> None:
    """a leads and has written (as the audit log shows: attribution works); b waits."""
    a.start(*extra)
    wait_for(a.leading, timeout=60, what="the first operator to lead")
    b.start()
    wait_for(lambda: "campaigning" in b.text(), timeout=30, what="the standby to campaign")
    suspended_job(custom, namespace, "before")
    wait_statuses(custom, namespace, ["before"])
    wait_for(
        lambda: writes_by(audit.read(audit_log), a),
        timeout=30,
        what="the leader's writes in the audit log",
    )


def test_a_paused_leader_writes_nothing_after_the_standby_took_over(
    candidates: tuple[Candidate, Candidate],
    custom: Any,
    leases: Any,
    namespace: str,
    audit_log: Path,
) -> None:
    a, b = candidates
    lease = lease_name(a)
    lead_and_write(a, b, custom, namespace, audit_log)
    a.pause()
    try:
        wait_for(
            lambda: holder(leases, namespace, lease) == b.identity(),
            timeout=60,
            what="the standby to take the lease",
        )
        suspended_job(custom, namespace, "during")
        wait_statuses(custom, namespace, ["during"])  # the new leader acts
        # Work both would race for: the paused one wakes with timers overdue and these
        # jobs' watch events buffered.
        burst = [f"burst-{i}" for i in range(6)]
        for name in burst:
            suspended_job(custom, namespace, name)
    finally:
        a.resume()
    assert a.proc is not None
    wait_for(lambda: a.proc.poll() is not None, timeout=30, what="the deposed leader to exit")
    wait_statuses(custom, namespace, burst)
    assert_nothing_after_takeover(audit_log, lease, a, b)
    assert a.proc.returncode == 1, a.tail()
    assert "lost the lease" in a.text()


def test_a_leader_whose_renewals_fail_stops_before_the_standby_takes_over(
    candidates: tuple[Candidate, Candidate],
    cluster: Any,
    custom: Any,
    leases: Any,
    namespace: str,
    audit_log: Path,
) -> None:
    """Only the election's client goes through the proxy; the leader's kopf and
    reconciler reach the API server directly and keep working while its renewals hang."""
    a, b = candidates
    lease = lease_name(a)
    api = urlsplit(cluster.apiserver_url)
    with FaultProxy(api.hostname or "127.0.0.1", api.port or 443) as proxy:
        lead_and_write(a, b, custom, namespace, audit_log, "--leader-election-server", proxy.url)
        # A job every 0.3 s from the fault until after the takeover: whoever leads writes.
        created: list[str] = []
        stop = threading.Event()

        def stream() -> None:
            while not stop.is_set():
                name = f"s-{len(created)}"
                suspended_job(custom, namespace, name)
                created.append(name)
                stop.wait(0.3)

        writer = threading.Thread(target=stream, daemon=True)
        fault = datetime.now(UTC)
        proxy.set_mode("drop")
        writer.start()
        try:
            wait_for(
                lambda: holder(leases, namespace, lease) == b.identity(),
                timeout=60,
                what="the standby to take the lease",
            )
            assert a.proc is not None
            # It stopped at its deadline, before the takeover. One that did not keeps
            # writing: the audit log below shows it.
            with contextlib.suppress(AssertionError):
                wait_for(lambda: a.proc.poll() is not None, timeout=15, what="the old one's exit")
            time.sleep(1.5)  # more jobs, for the new leader only
        finally:
            stop.set()
            writer.join(10)
    wait_statuses(custom, namespace, created)
    events, took = assert_nothing_after_takeover(audit_log, lease, a, b)
    # The fault hit a leader that was still acting: it wrote between the fault and its
    # deadline (its other calls went through), so the fence, not idleness, kept it quiet.
    acted = [e for e in writes_by(events, a) if fault < e.received < took.received]
    assert [e for e in acted if e.resource != "leases"], "the leader wrote nothing after the fault"
    assert a.proc.poll() == 1, a.tail()
    assert "lost the lease" in a.text() and "no renewal in" in a.text()
