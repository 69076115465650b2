"""Expectations (client-go's `ControllerExpectations`): the pods a pass created or deleted,
kept per job until the pod watch has shown them.

The pod index lags behind the operator's own requests. A pass that decided from a copy
not yet showing the pods an earlier pass created would POST them again (409s) and write
status from stale counts. So a pass records what it is about to do *before* it does it
(the watch can deliver the new pod before the POST returns), and the controller runs no
pass for the job until the watch has shown every one: the new pods by name, the deleted
ones (by uid) with a deletionTimestamp or gone, a relabelled spare (by name) with its new
worker index. A request that failed, so that the watch
will never show it, is taken back at once. A TTL is the safety net for an event that
never comes (client-go's is five minutes too): the pass then runs on what it sees.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, job name)
TTL_SECONDS = 300.0


@dataclass
class Pending:
    creations: set[str] = field(default_factory=set)  # pod names not shown yet
    deletions: set[str] = field(default_factory=set)  # pod uids not shown going yet
    # Spares that take a worker index (pod name -> index), not shown with it yet.
    relabels: dict[str, int] = field(default_factory=dict)
    since: float = 0.0  # monotonic: when the last expectation was raised

    def __bool__(self) -> bool:
        return bool(self.creations or self.deletions or self.relabels)


class Expectations:
    def __init__(
        self, ttl: float = TTL_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self._clock = clock
        self._pending: dict[Key, Pending] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def expect(
        self,
        key: Key,
        creations: Iterable[str] = (),
        deletions: Iterable[str] = (),
        relabels: Mapping[str, int] | None = None,
    ) -> None:
        """Call before the requests: pods about to be created (names), deleted (uids),
        relabelled to a worker index (name -> index)."""
        creations, deletions = set(creations), set(filter(None, deletions))
        if not creations and not deletions and not relabels:
            return
        p = self._pending.setdefault(key, Pending())
        p.creations |= creations
        p.deletions |= deletions
        p.relabels.update(relabels or {})
        p.since = self._clock()

    def created(self, key: Key, name: str) -> None:
        """The pod `name` exists now, as the watch shows it (or the create failed)."""
        p = self._pending.get(key)
        if p is not None:
            p.creations.discard(name)
            self._drop_if_met(key, p)

    def deleted(self, key: Key, uid: str) -> None:
        """The pod `uid` is going or gone, as the watch shows it (or the delete failed)."""
        p = self._pending.get(key)
        if p is not None:
            p.deletions.discard(uid)
            self._drop_if_met(key, p)

    def relabeled(self, key: Key, name: str) -> None:
        """The pod `name` shows its new index (or the patch failed)."""
        p = self._pending.get(key)
        if p is not None and p.relabels.pop(name, None) is not None:
            self._drop_if_met(key, p)

    def observe(self, key: Key, name: str, uid: str, going: bool, index: int | None = None) -> None:
        """A pod watch event: the pod's name is seen, with its worker index; with `going`
        (a deletionTimestamp, or DELETED), its uid is seen leaving. Called after kopf
        updated the pod index."""
        self.created(key, name)
        p = self._pending.get(key)
        if p is not None and name in p.relabels and (going or p.relabels[name] == index):
            self.relabeled(key, name)
        if going:
            self.deleted(key, uid)

    def satisfied(self, key: Key) -> bool:
        """True when nothing is pending for the job, or when it waited longer than the TTL
        (then dropped, with a warning: an event was lost, the pass goes on)."""
        p = self._pending.get(key)
        if p is None:
            return True
        if self._clock() - p.since < self.ttl:
            return False
        log.warning(
            "%s/%s: pods never seen by the watch after %.0fs (created %s, deleted %s, "
            "relabelled %s); going on without them",
            *key,
            self.ttl,
            sorted(p.creations),
            sorted(p.deletions),
            sorted(p.relabels),
        )
        del self._pending[key]
        return True

    def outstanding(self, key: Key) -> Pending | None:
        return self._pending.get(key)

    def forget(self, key: Key) -> None:
        """The job is gone."""
        self._pending.pop(key, None)

    def _drop_if_met(self, key: Key, p: Pending) -> None:
        if not p:
            del self._pending[key]
