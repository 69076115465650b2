"""kopf's settings for this operator: watches, timeouts, queues, what kopf may write."""

from __future__ import annotations

import logging

import kopf

from gaudi_operator import api
from gaudi_operator.runtime.config import OperatorConfig


def apply(settings: kopf.OperatorSettings, cfg: OperatorConfig) -> None:
    # Watches: the server closes them before the client gives up; kopf reconnects.
    settings.watching.server_timeout = cfg.watch_timeout
    settings.watching.client_timeout = cfg.watch_timeout + 60
    settings.watching.connect_timeout = 30
    # Only our pods and services: at cluster scale, never stream every pod to the operator.
    selector = f"{api.LABEL_MANAGED_BY}={api.MANAGED_BY}"
    settings.watching.label_selectors["v1", "pods"] = selector
    settings.watching.label_selectors["v1", "services"] = selector
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 30
    # kopf's own per-object event queues; our passes run in the controller's pool.
    settings.queueing.worker_limit = 200
    settings.posting.level = logging.WARNING
    # Nothing here uses kopf's progress or diff-base; keep them off status if ever used.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=api.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=api.GROUP, key="last-handled-configuration"
    )
