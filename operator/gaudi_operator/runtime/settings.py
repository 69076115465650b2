"""kopf's settings for this operator: watches, timeouts, queues, what kopf may write."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import kopf

from gaudi_operator import api
from gaudi_operator.runtime.config import OperatorConfig


def apply(settings: kopf.OperatorSettings, cfg: OperatorConfig) -> None:
    # Watches: the server closes them before the client gives up; kopf reconnects.
    settings.watching.server_timeout = cfg.watch_timeout
    settings.watching.client_timeout = cfg.watch_timeout + 60
    settings.watching.connect_timeout = 30
    # Initial lists in pages of 500, as client-go's reflector: a cluster's 1,250 nodes or
    # 10,000 pods are not one answer decoded at once at start-up (the peak memory).
    settings.watching.chunk_size = 500
    # Only our pods and services: at cluster scale, never stream every pod to the operator.
    selector = f"{api.LABEL_MANAGED_BY}={api.MANAGED_BY}"
    settings.watching.label_selectors["v1", "pods"] = selector
    settings.watching.label_selectors["v1", "services"] = selector
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 30
    # kopf's own per-object event queues; our passes run in the controller's pool. Our
    # handlers only update indices and enqueue a key (no I/O), so no bound is needed; a bound
    # blocks the whole watch stream once reached, and each per-object worker holds its slot
    # for `idle_timeout` after its last event: 200 slots x 5 s capped a burst at 40 new
    # objects/s per resource (the profile in docs/performance.md). A short idle time also
    # frees the workers (and their memory) of a burst soon after it.
    settings.queueing.worker_limit = None
    settings.queueing.idle_timeout = 0.5
    settings.posting.level = logging.WARNING
    # Nothing here uses kopf's progress storage; keep it off status if ever used.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=api.GROUP)
    settings.persistence.diffbase_storage = NoDiffBase()


class NoDiffBase(kopf.DiffBaseStorage):
    """No diff base: kopf builds one for every event (a deep copy of the whole object, the
    largest single cost in the profile) only for on.create/update/resume/field handlers,
    which this operator does not use (tests/unit/runtime/test_settings.py holds that)."""

    def build(self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None) -> Any:
        return {}

    def fetch(self, *, body: kopf.Body) -> Any:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: Any) -> None:
        return None


class SharedMemo(kopf.Memo):
    """One memo for the operator and every object it sees.

    kopf gives each object a shallow copy of the operator's memo the first time it sees
    it, and keeps it as long as the object lives: about half a KiB per pod, job and
    Service (5 MB at 10,000 pods) for keys no handler changes per object. Ours only read
    what the start-up handlers put there (the controller, the clients), so every object
    shares this one; a key set later is also seen by every object at once."""

    def __copy__(self) -> SharedMemo:
        return self
