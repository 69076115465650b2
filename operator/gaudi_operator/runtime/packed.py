"""A job as the index keeps it: compact JSON, decoded by whoever reads it.

Decoded, a job (metadata, spec with its pod template, status with its conditions) is
about 8 to 14 KiB of Python dicts and strings; as JSON it is 2 to 4 KiB. The index holds
every job for as long as it lives, and is read a few times per job event (a pass, the
stall clock's sweep, admission): decoding one costs tens of microseconds, far less than
the pass that reads it. Plain mappings pass through (tests bind dicts).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

Packed = bytes


def pack(body: Mapping[str, Any]) -> Packed:
    return json.dumps(body, separators=(",", ":")).encode()


def unpack(value: Packed | Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    if value is None or isinstance(value, Mapping):
        return value
    decoded: dict[str, Any] = json.loads(value)
    return decoded
