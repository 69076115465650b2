"""The one status writer: every write of a GaudiTrainingJob's status goes through here.

Several loops share a job's status, each writing its own part (`Writer` below): the
reconciler everything but the others' fields, the autoscaler `lastScale`, `autoscaling`
and its two conditions, the stall clock `progress`, Kueue admission the `Queued`
condition. Every write, whoever makes it:

- is the JSON merge patch from the status the writer read to the status it wants, over
  the fields it writes; conditions go by type (a merge patch replaces the whole list, so
  only the types this writer changed are applied). Nothing changed: no request at all;
- is guarded by the resourceVersion the writer read (optimistic concurrency);
- on a conflict reads the job again. When the part of the status the writer decided from
  changed meanwhile, its decision is stale: `RetrySoon`, nothing written, decide again.
  Otherwise its own changes are rebased onto what the others wrote, and it tries again;
- returns the object the API server answered with, so the caller can read its own
  writes before the watch shows them (`runtime.controller.Written`).

`commit` is the strict form for intents written before their effects (a restart, a
resize): guarded, never rebased; a conflict means nothing may be done.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gaudi_operator import api
from gaudi_operator.clients import kube

log = logging.getLogger(__name__)

ATTEMPTS = 3


class RetrySoon(Exception):
    """A pass found its view of the job stale (a guarded write conflicted) and did
    nothing: run it again shortly, on a fresh view. Not an error."""


def _condition(status: Mapping[str, Any], type_: str) -> Any:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), None)


@dataclass(frozen=True)
class Writer:
    """One writer of the status: its name (logs) and the part of the status its decisions
    depend on. When that part changed between the writer's read and its write, the
    write is refused as stale instead of rebased."""

    name: str
    decided_from: Callable[[Mapping[str, Any]], Any]


RECONCILER = Writer("reconciler", api.reconciler_part)
AUTOSCALER = Writer(
    "autoscaler",
    lambda s: (
        {k: s.get(k) for k in api.AUTOSCALER_FIELDS},
        [c for c in s.get("conditions") or [] if c.get("type") in api.AUTOSCALER_CONDITIONS],
    ),
)
STALL_CLOCK = Writer("stall-clock", lambda s: {k: s.get(k) for k in api.STALL_CLOCK_FIELDS})
QUEUEING = Writer("queueing", lambda s: _condition(s, "Queued"))


def merge_conditions(
    old: Sequence[Mapping[str, Any]],
    new: Sequence[Mapping[str, Any]],
    current: Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """Rebase a writer's condition changes (`old` -> `new`) onto the conditions the server
    has now: keep the others' types, apply only the types this writer added, changed or
    removed."""
    before = {c.get("type"): c for c in old}
    after = {c.get("type"): c for c in new}
    changed = {t for t in after if before.get(t) != after[t]}
    removed = {t for t in before if t not in after}
    merged = [
        dict(after[c.get("type")]) if c.get("type") in changed else dict(c)
        for c in current
        if c.get("type") not in removed
    ]
    have = {c.get("type") for c in merged}
    merged += [dict(after[t]) for t in after if t in changed and t not in have]
    return merged


def apply_merge_patch(target: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """RFC 7386, as the API server applies a merge patch."""
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = apply_merge_patch(out[key], value)
        else:
            out[key] = value
    return out


def _scoped(status: Mapping[str, Any], fields: Collection[str] | None) -> dict[str, Any]:
    return dict(status) if fields is None else {k: status[k] for k in fields if k in status}


def status_patch(
    old: Mapping[str, Any], new: Mapping[str, Any], fields: Collection[str] | None = None
) -> dict[str, Any]:
    """The merge patch from `old` to `new` over `fields` (None: every field), nested
    objects included: a key the new value no longer has is sent as null."""
    return kube.merge_patch(_scoped(old, fields), _scoped(new, fields))


def _rebased(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    current: Mapping[str, Any],
    fields: Collection[str] | None,
) -> dict[str, Any]:
    """This writer's change (`old` -> `new`) applied onto `current`, as a patch from
    `current`: empty when the server already has it."""
    patch = status_patch(old, new, fields)
    if "conditions" in patch:
        patch["conditions"] = merge_conditions(
            old.get("conditions") or [],
            new.get("conditions") or [],
            current.get("conditions") or [],
        )
    wanted = apply_merge_patch(current, patch)
    return status_patch(current, wanted, fields)


def _meta(body: Mapping[str, Any]) -> tuple[str, str, str | None]:
    meta = body.get("metadata") or {}
    return (
        str(meta.get("namespace") or ""),
        str(meta.get("name") or ""),
        meta.get("resourceVersion"),
    )


class StatusWriter:
    def __init__(self, clients: kube.Clients, attempts: int = ATTEMPTS) -> None:
        self.clients = clients
        self.attempts = attempts

    async def write(
        self,
        read: Mapping[str, Any],
        new: Mapping[str, Any],
        *,
        writer: Writer = RECONCILER,
        fields: Collection[str] | None = None,
    ) -> dict[str, Any] | None:
        """Write the change from `read`'s status to `new` over `fields` (None: the whole
        status). Returns the job as written, the job as it is when it already had the
        change, or None when nothing changed or the job is gone. Raises `RetrySoon` when
        the writer's part changed since `read` (see `Writer`), or conflicts kept coming."""
        old = read.get("status") or {}
        patch = status_patch(old, new, fields)
        if not patch:
            return None
        ns, name, rv = _meta(read)
        for attempt in range(self.attempts):
            try:
                return await self._patch(ns, name, rv, patch)
            except Exception as err:
                code = kube.status_code(err)
                if code == 404:
                    return None  # deleted meanwhile
                if code != 409:
                    raise
            current = await self._get(ns, name)
            if current is None:
                return None
            now = current.get("status") or {}
            patch = _rebased(old, new, now, fields)
            if not patch:
                return current  # it has what this writer wants already
            if writer.decided_from(now) != writer.decided_from(old):
                raise RetrySoon(f"{writer.name}: the job's status changed since it was read")
            _, _, rv = _meta(current)
            log.debug("%s/%s: %s rebased its status write (%d)", ns, name, writer.name, attempt)
        raise RetrySoon(f"{writer.name}: the job's status kept changing under its write")

    async def commit(
        self, read: Mapping[str, Any], new: Mapping[str, Any], fields: Collection[str]
    ) -> dict[str, Any]:
        """Intent before effect: write `fields` of `new`, guarded by `read`'s version and
        never rebased. A conflict (the job changed since `read`) or a job gone raises
        `RetrySoon`: nothing was written, so nothing may be acted on."""
        ns, name, rv = _meta(read)
        patch = status_patch(read.get("status") or {}, new, fields)
        try:
            return await self._patch(ns, name, rv, patch)
        except Exception as err:
            if kube.status_code(err) in (404, 409):
                raise RetrySoon(f"the job changed since this pass read it ({err})") from err
            raise

    async def _patch(
        self, ns: str, name: str, rv: str | None, patch: Mapping[str, Any]
    ) -> dict[str, Any]:
        path = kube.custom_path(api.GROUP, api.VERSION, ns, api.PLURAL, name, "status")
        return await self.clients.patch(
            path, {"metadata": {"resourceVersion": rv}, "status": patch}
        )

    async def _get(self, ns: str, name: str) -> dict[str, Any] | None:
        try:
            got = await self.clients.get(
                kube.custom_path(api.GROUP, api.VERSION, ns, api.PLURAL, name)
            )
        except Exception as err:
            if kube.status_code(err) == 404:
                return None
            raise
        return got
