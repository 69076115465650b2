"""Fake `habana_frameworks.torch.hpu`: FAKE_HABANA_DEVICES Gaudis (8 by default; 0 = none)."""

from __future__ import annotations

import os

from habana_frameworks import _fake

_fake.record("import", module=__name__, env=_fake.environment())


def device_count() -> int:
    return int(os.environ.get("FAKE_HABANA_DEVICES", "8"))


def is_available() -> bool:
    return device_count() > 0
