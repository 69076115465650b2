"""Standard metav1.Condition bookkeeping on a status: upsert, read, clear."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from gaudi_operator.api.status import Condition
from gaudi_operator.api.times import to_rfc3339


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None = None,
) -> list[Condition]:
    """Upsert a condition; lastTransitionTime moves only when the status flips."""
    value = "True" if status else "False"
    out: list[Condition] = []
    found = False
    for c in conditions:
        if c.type != type_:
            out.append(c)
            continue
        found = True
        changed = c.status != value
        out.append(
            Condition(
                type=type_,
                status=value,
                reason=reason,
                message=message,
                last_transition_time=to_rfc3339(now) if changed else c.last_transition_time,
                observed_generation=generation,
            )
        )
    if not found:
        out.append(
            Condition(
                type=type_,
                status=value,
                reason=reason,
                message=message,
                last_transition_time=to_rfc3339(now),
                observed_generation=generation,
            )
        )
    return out


def get_condition(conditions: Iterable[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def clear_condition(
    conditions: list[Condition], type_: str, reason: str, now: datetime, generation: int
) -> list[Condition]:
    """Set a condition False only if it is present (absent means False already)."""
    if get_condition(conditions, type_) is None:
        return conditions
    return set_condition(conditions, type_, False, reason, "", now, generation)
