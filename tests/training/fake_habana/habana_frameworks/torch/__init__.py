"""Fake `habana_frameworks.torch` (see habana_frameworks/__init__.py)."""

from __future__ import annotations

import habana_frameworks
from habana_frameworks import _fake

habana_frameworks.is_loaded = True
_fake.record("import", module=__name__, env=_fake.environment())
