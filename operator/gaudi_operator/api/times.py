"""Kubernetes timestamps: parsed once at the edge, written back as RFC 3339."""

from __future__ import annotations

from datetime import UTC, datetime


def to_rfc3339(t: datetime) -> str:
    """RFC 3339 in UTC with a Z, the form Kubernetes writes and expects."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(value: str | None) -> datetime | None:
    """Parse a Kubernetes timestamp ("...Z"); None for None or garbage."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
