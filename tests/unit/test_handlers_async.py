"""kopf runs a plain `def` handler in its thread pool; ours mutate the work queue, the
node cache and the disruption log, which the event loop owns. So every handler the
operator registers must be a coroutine function."""

from __future__ import annotations

import inspect
from typing import Any

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


def test_each_resource_has_one_event_handler_and_at_most_one_index() -> None:
    """kopf runs every handler of a resource on each of its events, with a full set of
    keyword arguments and an outcome each: one handler per behaviour was most of the
    operator's CPU at a thousand jobs. gaudi_operator.handlers feeds every behaviour."""
    from collections import Counter

    registry = kopf.get_default_registry()

    def per_resource(sub: Any) -> Counter[str]:
        ours = [h for h in sub.get_all_handlers() if h.fn.__module__.startswith("gaudi_operator.")]
        assert all(h.fn.__module__ == "gaudi_operator.handlers" for h in ours)
        return Counter(
            f"{h.selector.group or ''}/{h.selector.plural or h.selector.any_name}" for h in ours
        )

    events = per_resource(registry._watching)
    indices = per_resource(registry._indexing)
    assert set(events) >= {
        "/pods",
        "/services",
        "/nodes",
        "gaudi.scalestarter.dev/gauditrainingjobs",
    }
    assert max(events.values()) == 1, events
    assert max(indices.values()) == 1, indices
