"""Times and short words the way kubectl prints them."""

from __future__ import annotations

from datetime import UTC, datetime


def parse_time(value: object) -> datetime | None:
    """An RFC 3339 time as the API writes it ("2025-01-02T03:04:05Z", with or without a
    fraction), aware in UTC; None for anything else."""
    if not isinstance(value, str) or not value:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def duration(seconds: float) -> str:
    """kubectl's short human duration (its AGE column): 45s, 3m12s, 42m, 5h3m, 3d4h."""
    s = max(int(seconds), 0)
    if s < 120:
        return f"{s}s"
    m = s // 60
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    h = m // 60
    if h < 3:
        return f"{m}m"
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    d = h // 24
    if h < 48:
        return f"{h}h"
    if d < 8:
        return f"{d}d{h % 24}h" if h % 24 else f"{d}d"
    return f"{d}d"


def age(value: object, now: datetime) -> str:
    """How long ago an API time was ("-" when there is none)."""
    t = parse_time(value)
    return "-" if t is None else duration((now - t).total_seconds())


def number(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)
