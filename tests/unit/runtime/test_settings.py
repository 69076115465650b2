"""kopf settings that are only safe while the operator registers no handler kind that
needs them."""

from __future__ import annotations

import kopf

import gaudi_operator.app  # noqa: F401  (registers every handler)
from gaudi_operator.runtime.config import OperatorConfig
from gaudi_operator.runtime.settings import NoDiffBase, apply


def test_no_change_or_spawn_handlers_since_no_diff_base_is_kept() -> None:
    # on.create/update/resume/field and daemons/timers compare against the diff base,
    # which NoDiffBase never keeps: adding one of them needs a real storage back.
    registry = kopf.get_default_registry()
    ours = [
        h.id
        for sub in (registry._changing, registry._spawning)
        for h in sub.get_all_handlers()
        if h.fn.__module__.startswith("gaudi_operator.")
    ]
    assert ours == []


def test_the_diff_base_is_never_built_from_the_object() -> None:
    settings = kopf.OperatorSettings()
    apply(settings, OperatorConfig())
    storage = settings.persistence.diffbase_storage
    assert isinstance(storage, NoDiffBase)
    body = kopf.Body({"metadata": {"name": "j"}, "spec": {"image": "x"}})
    assert storage.build(body=body) == {}
    assert storage.fetch(body=body) is None


def test_every_object_shares_the_operators_memo() -> None:
    """kopf copies the memo for each object it remembers (inventory.recall); the shared
    memo's copy is itself, so no per-object dict is kept."""
    import asyncio

    from kopf._core.reactor.inventory import ResourceMemories

    from gaudi_operator.runtime.settings import SharedMemo

    memo = SharedMemo(config="cfg")

    async def recall() -> object:
        memories = ResourceMemories()
        body = {"metadata": {"uid": "u1", "name": "p", "namespace": "ns"}}
        return await memories.recall_memo(raw_body=body, memobase=memo)  # type: ignore[arg-type]

    assert asyncio.run(recall()) is memo
    memo["controller"] = "set later"
    assert asyncio.run(recall())["controller"] == "set later"
