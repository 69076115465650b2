"""kopf runs a plain `def` handler in its thread pool; ours mutate the work queue, the
node cache and the disruption log, which the event loop owns. So every handler the
operator registers must be a coroutine function."""

from __future__ import annotations

import inspect

import kopf

import gaudi_operator.app  # noqa: F401  (registers every handler)


def test_every_registered_handler_runs_on_the_event_loop() -> None:
    registry = kopf.get_default_registry()
    handlers = [
        h
        for sub in (registry._indexing, registry._watching, registry._activities)
        for h in sub.get_all_handlers()
        if h.fn.__module__.startswith("gaudi_operator.")  # not kopf's own login activity
    ]
    assert len(handlers) >= 10
    threaded = [h.id for h in handlers if not inspect.iscoroutinefunction(h.fn)]
    assert threaded == []
