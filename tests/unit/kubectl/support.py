"""Objects as the API serves them (camelCase JSON), for the plugin's pure views."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Console, RenderableType

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)


def ago(seconds: float) -> str:
    return (NOW - timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def text(renderable: RenderableType, width: int = 200) -> str:
    console = Console(width=width, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(renderable)
    return console.export_text()


def job(name: str = "tiny", phase: str | None = "Running", **status: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "gaudi.scalestarter.dev/v1alpha1",
        "kind": "GaudiTrainingJob",
        "metadata": {"name": name, "namespace": "team", "creationTimestamp": ago(600)},
        "spec": {
            "image": "registry.example/gaudi-train:1",
            "hpusPerWorker": 8,
            "workers": {"replicas": 2, "minReplicas": 1, "maxReplicas": 2},
            "failurePolicy": {"maxRestarts": 5},
        },
    }
    if phase is not None:
        body["status"] = {"phase": phase, "workers": "2/2", "restarts": 0, **status}
    return body


def cond(type_: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": ago(60),
    }


def pod(
    name: str,
    phase: str = "Running",
    node: str | None = "gaudi3-real-0",
    *,
    ready: bool = True,
    waiting: tuple[str, str] | None = None,
    terminated: tuple[int, str, str] | None = None,
    unschedulable: str | None = None,
) -> dict[str, Any]:
    state: dict[str, Any] = {"running": {"startedAt": ago(300)}}
    if waiting:
        state = {"waiting": {"reason": waiting[0], "message": waiting[1]}}
    if terminated:
        code, reason, message = terminated
        state = {"terminated": {"exitCode": code, "reason": reason, "message": message}}
    status: dict[str, Any] = {
        "phase": phase,
        "containerStatuses": [{"name": "worker", "ready": ready, "state": state}],
    }
    if unschedulable:
        status = {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": unschedulable,
                }
            ],
        }
    return {
        "metadata": {"name": name, "namespace": "team"},
        "spec": {"nodeName": node} if node else {},
        "status": status,
    }


def event(obj: str, reason: str, message: str, seconds_ago: float, type_: str = "Warning") -> dict:
    kind, name = obj.split("/")
    return {
        "involvedObject": {"kind": kind, "name": name},
        "type": type_,
        "reason": reason,
        "message": message,
        "lastTimestamp": ago(seconds_ago),
        "count": 1,
    }
