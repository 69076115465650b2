"""A stand-in for Intel's `habana_frameworks`, for tests only (never shipped in an image).

There is no Gaudi hardware and no Intel package here. This fake has the names
gaudi_train calls, with the behaviour Intel documents, and records every call, with the
environment at import time, in a shared log (habana_frameworks._fake): the tests check
that PT_HPU_LAZY_MODE was set before the bridge loaded, where mark_step() falls, which
process-group backend and compile backend were asked for, and which RNG states were read
and written. Nothing in it computes on a device: the tests keep tensors on the CPU.

Like Intel's package it has a `torch.backends` entry point (the dist-info beside it), so
`import torch` (2.5+) imports it when this folder is on the path, as Intel's images do
(pytorch/tutorials, "Autoloading Out-of-Tree Extension").
"""

from __future__ import annotations

from habana_frameworks import _fake

_fake.record("import", module=__name__, env=_fake.environment())

is_loaded = False  # set by habana_frameworks.torch, as in Intel's package


def _autoload() -> None:
    """The `torch.backends` entry point: import the bridge."""
    if is_loaded:
        return
    import habana_frameworks.torch  # noqa: F401
