"""Operator replicas with leader election, for the tests that run two of them (the
leader-election tests and the chaos run): each replica is a real `gaudi3 operator`
process, with short Lease timings, that a test can SIGKILL, SIGSTOP and resume."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cluster.gtj import OperatorProcess

# Short, and valid: 3 + 2 x 1 < 6. The deposed leader stops 3 s after its last renewal;
# the standby may take over 6 s after it.
LEASE, DEADLINE, RETRY = "6", "3", "1"


class Candidate(OperatorProcess):
    """An operator with leader election on its own Lease, serving the namespaces given
    (the Lease lives in the first)."""

    def __init__(
        self, cluster: Any, log: Path, namespaces: str | Sequence[str], lease: str
    ) -> None:
        super().__init__(Path(cluster.kubeconfig), log, leader_elect=True)
        served = [namespaces] if isinstance(namespaces, str) else list(namespaces)
        self.args = (
            *(a for ns in served for a in ("--namespace", ns)),
            "--leader-election-namespace",
            served[0],
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
        """This process's log since its last start (a replica restarted by a test appends
        to the same file)."""
        if not self.log.exists():
            return ""
        whole = self.log.read_text(errors="replace")
        return whole[max(0, whole.rfind("\n===== start ")) :]

    def identity(self) -> str:
        found = re.search(r"campaigning for the lease \S+ as (\S+)", self.text())
        assert found, self.tail()
        return found.group(1)

    def leading(self) -> bool:
        return "leading: the lease" in self.text()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

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


def holder(leases: Any, namespace: str, name: str) -> str | None:
    lease = leases.read_namespaced_lease(name, namespace)
    return lease.spec.holder_identity if lease.spec else None


def lease_name(c: Candidate) -> str:
    return c.args[-1]
