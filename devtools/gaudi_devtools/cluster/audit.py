"""The local API server's audit log: every write it received, who sent it and when, as the
server recorded it. Tests read it to prove what reached the server (a deposed leader's
writes, for one) without trusting the client's own log.

The policy logs write verbs at Metadata level (no bodies) once the response is complete,
and leaves out the control plane's own heartbeats (node and component Leases, node
status), which would be most of the lines. Reference: the audit Policy API,
https://kubernetes.io/docs/tasks/debug/debug-cluster/audit/ .
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

WRITE_VERBS = ["create", "update", "patch", "delete", "deletecollection"]

POLICY: dict[str, Any] = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    # One line per request, when its response is complete (its status code known).
    "omitStages": ["RequestReceived", "ResponseStarted"],
    "rules": [
        {"level": "None", "nonResourceURLs": ["*"]},
        {"level": "None", "verbs": ["get", "list", "watch"]},
        # Heartbeats of the nodes (kwok's and real kubelets') and of the control plane.
        {"level": "None", "namespaces": ["kube-node-lease"]},
        {
            "level": "None",
            "namespaces": ["kube-system"],
            "resources": [{"group": "coordination.k8s.io", "resources": ["leases"]}],
        },
        {"level": "None", "resources": [{"group": "", "resources": ["nodes/status"]}]},
        {"level": "Metadata", "verbs": WRITE_VERBS},
        {"level": "None"},
    ],
}


def flags(policy_file: Path, log_file: Path) -> list[str]:
    """kube-apiserver flags: JSON lines, written before the response returns (blocking
    mode, the log backend's default), rotated at 100 MB with one old file kept."""
    return [
        f"--audit-policy-file={policy_file}",
        f"--audit-log-path={log_file}",
        "--audit-log-format=json",
        "--audit-log-mode=blocking",
        "--audit-log-maxsize=100",
        "--audit-log-maxbackup=1",
    ]


@dataclass(frozen=True)
class Event:
    """One write as the API server recorded it."""

    verb: str
    user: str
    user_agent: str
    resource: str  # e.g. "pods", "pods/status", "leases"
    namespace: str
    name: str
    code: int  # the response's status code (409: refused by a precondition)
    received: datetime  # requestReceivedTimestamp (microseconds)
    completed: datetime  # stageTimestamp of ResponseComplete

    @classmethod
    def parse(cls, line: str) -> Event:
        d = json.loads(line)
        ref = d.get("objectRef") or {}
        resource = ref.get("resource", "")
        if ref.get("subresource"):
            resource += "/" + ref["subresource"]
        return cls(
            verb=d.get("verb", ""),
            user=(d.get("user") or {}).get("username", ""),
            user_agent=d.get("userAgent", ""),
            resource=resource,
            namespace=ref.get("namespace", ""),
            name=ref.get("name", ""),
            code=int((d.get("responseStatus") or {}).get("code") or 0),
            received=_time(d["requestReceivedTimestamp"]),
            completed=_time(d["stageTimestamp"]),
        )

    def __str__(self) -> str:
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return (
            f"{self.received.isoformat()} {self.verb} {self.resource} {where} -> {self.code} "
            f"by {self.user_agent!r}"
        )


def _time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def log_files(log_file: Path) -> list[Path]:
    """The log and its rotated predecessor (audit-<time>.log), oldest first."""
    rotated = sorted(log_file.parent.glob(f"{log_file.stem}-*{log_file.suffix}"))
    return [*rotated, *([log_file] if log_file.exists() else [])]


def read(log_file: Path) -> list[Event]:
    return list(parse_lines(line for f in log_files(log_file) for line in _lines(f)))


def _lines(path: Path) -> Iterator[str]:
    with path.open(errors="replace") as f:
        yield from f


def parse_lines(lines: Iterable[str]) -> Iterator[Event]:
    for line in lines:
        line = line.strip()
        if line:
            try:
                yield Event.parse(line)
            except (ValueError, KeyError):
                continue  # a line cut by a rotation or a crash
