"""What the launchers of in-place jobs say (failurePolicy.restartInPlace): one long poll
per worker pod, its latest status kept for the passes, and the decisions delivered.

Detection (the protocol's step 2): each running worker's launcher is long-polled with
`GET /status?since=<version>&wait=30`; its answer comes as soon as anything but the step
changed (a worker failed, the launcher waits, it took a decision, it runs again), and the
job is woken (`wake`, the controller's enqueue). The passes read the statuses through
`sync`, which also starts and stops the polls as pods come and go. A status is kept per
pod uid: a pod re-created under the same name starts from nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from gaudi_operator import api
from gaudi_operator.clients.launcher import (
    LONG_POLL_SECONDS,
    LauncherClient,
    Refused,
    Unreachable,
)
from gaudi_operator.jobs.observation import WorkerPod
from gaudi_operator.observability import metrics
from gaudi_train.control_protocol import Decision, LauncherStatus

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, job name)
RETRY_SECONDS = 0.5  # a launcher not up yet (or gone): asked again this often


@dataclass
class _Poll:
    uid: str
    ip: str
    token: str
    task: asyncio.Task[None] | None = None
    status: LauncherStatus | None = None
    said: set[str] = field(default_factory=set)  # warnings logged once per pod
    # Heard once, and the last request could not connect: its pod or node may be dead.
    unreachable: bool = False


class LauncherWatch:
    def __init__(self, client: LauncherClient | None = None, port: int = api.CONTROL_PORT):
        self._client = client
        self.port = port
        self.wake: Callable[[Key], None] | None = None
        self._polls: dict[Key, dict[str, _Poll]] = {}
        metrics.track_cache("launcher_polls", lambda: sum(len(p) for p in self._polls.values()))

    @property
    def client(self) -> LauncherClient:
        if self._client is None:
            self._client = LauncherClient()
        return self._client

    def sync(self, key: Key, token: str, pods: Iterable[WorkerPod]) -> dict[str, LauncherStatus]:
        """Poll exactly the live pods given (started ones with an IP); return what each
        pod's launcher last said, by pod name."""
        polls = self._polls.setdefault(key, {})
        live = {p.name: p for p in pods if p.ip and p.phase == "Running" and not p.deleting}
        for name in list(polls):
            poll = polls[name]
            pod = live.get(name)
            if pod is None or pod.uid != poll.uid or pod.ip != poll.ip or token != poll.token:
                self._stop(polls.pop(name))
        for name, pod in live.items():
            if name not in polls:
                poll = _Poll(pod.uid, pod.ip or "", token)
                poll.task = asyncio.get_running_loop().create_task(
                    self._poll(key, name, poll), name=f"launcher-{key[0]}/{name}"
                )
                polls[name] = poll
        return {n: p.status for n, p in polls.items() if p.status is not None}

    def unreachable(self, key: Key) -> frozenset[str]:
        """Pods whose launcher answered before and does not now (connection refused or
        timed out): a dead pod or node the pod watch may not show yet."""
        polls = self._polls.get(key, {})
        return frozenset(n for n, p in polls.items() if p.unreachable and p.status is not None)

    def forget(self, key: Key) -> None:
        for poll in self._polls.pop(key, {}).values():
            self._stop(poll)

    async def aclose(self) -> None:
        for key in list(self._polls):
            self.forget(key)
        if self._client is not None:
            await self._client.aclose()

    @staticmethod
    def _stop(poll: _Poll) -> None:
        if poll.task is not None:
            poll.task.cancel()

    async def _poll(self, key: Key, name: str, poll: _Poll) -> None:
        version: int | None = None
        while True:
            try:
                wait = LONG_POLL_SECONDS if version is not None else 0.0
                status = await self.client.status(
                    poll.ip, self.port, poll.token, since=version, wait=wait
                )
            except asyncio.CancelledError:
                raise
            except (Unreachable, Refused) as err:
                if isinstance(err, Unreachable) and not poll.unreachable:
                    poll.unreachable = True
                    if poll.status is not None and self.wake is not None:
                        self.wake(key)
                if isinstance(err, Refused) and str(err.code) not in poll.said:
                    poll.said.add(str(err.code))
                    log.warning("%s/%s: launcher of %s refused: %s", *key, name, err)
                version = None  # a new launcher (or none): start over
                await asyncio.sleep(RETRY_SECONDS)
                continue
            except Exception:  # never let one pod's poll die silently
                log.exception("%s/%s: polling the launcher of %s", *key, name)
                await asyncio.sleep(RETRY_SECONDS)
                continue
            before = poll.status
            poll.status, poll.unreachable = status, False
            version = status.version
            changed = before is None or before.version != status.version
            if changed and self.wake is not None:
                self.wake(key)

    async def deliver(
        self, key: Key, pods: Mapping[str, WorkerPod], decisions: Mapping[str, Decision]
    ) -> list[str]:
        """POST each launcher its decision (by pod name, concurrently); the names not
        reached (to be told again by the next pass)."""
        polls = self._polls.get(key, {})

        async def one(name: str) -> str | None:
            decision = decisions[name]
            pod, poll = pods.get(name), polls.get(name)
            if pod is None or not pod.ip or poll is None:
                return name
            try:
                code = await self.client.decide(pod.ip, self.port, poll.token, decision)
            except (Unreachable, Refused) as err:
                log.info("%s/%s: decision to %s not delivered: %s", *key, name, err)
                return name
            if code not in (200, 202):
                log.info("%s/%s: %s answered %s to %s", *key, name, code, decision.action)
            return None

        results = await asyncio.gather(*(one(n) for n in decisions))
        return [n for n in results if n is not None]
