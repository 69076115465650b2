"""Leader election between real operator processes on the real API server: only the Lease
holder reconciles, a standby takes over after the leader is SIGKILLed, a clean stop gives
the Lease back, and a leader that loses its Lease exits non-zero.

Each test uses its own Lease and watches only its own namespace, so an operator that other
tests run never counts here: who acted is read from each process's own log.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from cluster.gtj import OperatorProcess, create_job, get_job, job_body
from conftest import wait_for


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
            # Shorter than the defaults (10, 7, 2 s): a takeover and a deposed leader's exit
            # wait these out; enough retries left that a slow renewal is no lost lease.
            "--lease-duration",
            "6",
            "--renew-deadline",
            "4",
            "--retry-period",
            "1",
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
