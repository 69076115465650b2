"""The operator's controller and reconciler on the in-memory API server of
tests/unit/fake_api.py, with the kopf indices they read updated only when a test says the
watches caught up: the real code path of a pass, fast, with the watch's lag in the test's
hands."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from gaudi_operator import api
from gaudi_operator.jobs.observation import observe_pod
from gaudi_operator.jobs.reconciler import Reconciler
from gaudi_operator.runtime.controller import Controller
from gaudi_operator.runtime.expectations import Expectations
from unit.fake_api import FakeApi

NS = "team"
PLURAL = api.PLURAL


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
        self.t = 1000.0

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        self.t += seconds


class World:
    """One job in a fake API server, the operator's controller and reconciler on it, and
    the indices the controller reads, updated only when a test says the watch caught up."""

    def __init__(
        self, name: str, spec: dict[str, Any], debounce: float = 0.0, namespace: str = NS
    ) -> None:
        self.name = name
        self.ns = namespace
        self.key = (namespace, name)
        self.api = FakeApi()
        self.clock = Clock()
        self.expectations = Expectations(clock=lambda: self.clock.t)
        self.reconciler = Reconciler(
            self.api.clients(),
            clock=lambda: self.clock.now,
            monotonic=lambda: self.clock.t,
            expectations=self.expectations,
            status_debounce_seconds=debounce,
        )
        self.controller = Controller(self.reconciler, expectations=self.expectations)
        self.jobs: dict[Any, Any] = {}
        self.pods: dict[Any, Any] = {}
        self.services: dict[Any, Any] = {}
        self.controller.bind(self.jobs, self.pods, self.services)
        self.api.add(
            PLURAL,
            {
                "apiVersion": api.API_VERSION,
                "kind": api.KIND,
                "metadata": {"name": name, "namespace": self.ns, "generation": 1},
                "spec": {"image": "img", **spec},
            },
        )
        self.catch_up()

    @property
    def job(self) -> dict[str, Any]:
        return self.api.get(PLURAL, self.ns, self.name)

    def catch_up(self) -> None:
        """The watches deliver everything: indices as the store is, pod events observed."""
        self.jobs[self.key] = [copy.deepcopy(self.job)]
        pods = self.api.pods(self.ns)
        self.pods[self.key] = [observe_pod(p) for p in pods]
        for p in pods:
            meta = p["metadata"]
            self.controller.observe_pod(
                self.key,
                meta["name"],
                meta["uid"],
                bool(meta.get("deletionTimestamp")),
                index=observe_pod(p).index,
            )
        svc = [(self.ns, self.name)] if ("services", self.ns, self.name) in self.api.objects else []
        self.services[self.key] = [self.name] if svc else []

    def pass_(self) -> None:
        asyncio.run(self._pass())

    async def _pass(self) -> None:
        try:
            await self.controller.process(self.key)
            self.scheduled = self.controller.queue.scheduled()  # a pass asked to come back
        finally:
            self.controller.queue.close()

    def each_pod(self, change: Callable[[dict[str, Any]], None]) -> None:
        for pod in self.api.pods(self.ns):
            change(pod)
            pod["metadata"]["resourceVersion"] = str(int(pod["metadata"]["resourceVersion"]) + 1)

    def reasons(self, type_: str | None = None) -> list[str]:
        return [e["reason"] for e in self.api.events if type_ is None or e["type"] == type_]

    def forget(self) -> None:
        self.controller.forget(self.key)


def scheduled(pod: dict[str, Any]) -> None:
    pod["spec"]["nodeName"] = "node-1"
    pod["status"]["conditions"] = [{"type": "PodScheduled", "status": "True"}]


def running(pod: dict[str, Any]) -> None:
    scheduled(pod)
    pod["status"]["phase"] = "Running"
    pod["status"]["conditions"].append({"type": "Ready", "status": "True"})
