"""Eager or lazy: the HPU execution mode, chosen in one place, before Intel's bridge loads.

Intel's PyTorch bridge reads `PT_HPU_LAZY_MODE` once, when it initialises ("The software
stack reads this environment variable once at the time of initialization", docs.habana.ai,
PyTorch Gaudi Theory of Operations). In Intel's images `import torch` already loads the
bridge: `habana_frameworks` registers a `torch.backends` entry point that PyTorch (2.5+)
imports at the end of `import torch` (pytorch/tutorials, "Autoloading Out-of-Tree
Extension", the Intel Gaudi example). optimum-habana says the same: "PT_HPU_LAZY_MODE=0
needs to be set before library is loaded" (optimum/habana/transformers/training_args.py).

So the launcher settles the variable in its own environment before it imports torch
(`apply`, called first thing in `gaudi_train.launcher.launch`), and every worker
process inherits it. Nothing else in the package writes it; the workers only read it
(`current`).

- eager (`PT_HPU_LAZY_MODE=0`): Intel's default execution mode in current releases
  ("Eager mode with torch.compile is the default mode. Lazy mode is a legacy fallback
  that is no longer developed", PyTorch Support Matrix; Runtime Environment Variables
  lists 0 as the default, where older versions of that page listed 1). The only mode
  `torch.compile(backend="hpu_backend")` supports. The launcher always writes the
  variable, so the default of the bridge in a given image does not matter under it.
- lazy (`PT_HPU_LAZY_MODE=1`): ops accumulate into a graph that `mark_step()` flushes;
  the loop calls it after backward and after `optimizer.step()` (Model-References
  PyTorch/computer_vision/classification/torchvision/train.py).

No torch import here: the launcher calls this before torch is loaded.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, MutableMapping

log = logging.getLogger(__name__)

ENV = "PT_HPU_LAZY_MODE"  # Intel's variable: 0 eager (+ torch.compile), 1 lazy
SETTING = "GAUDI3_HPU_MODE"  # ours: eager | lazy, also the launcher's --hpu-mode
EAGER, LAZY = "eager", "lazy"
MODES = (EAGER, LAZY)
VALUES = {EAGER: "0", LAZY: "1"}
DEFAULT = EAGER  # Intel's default in current releases
BRIDGE = "habana_frameworks"


class ModeError(ValueError):
    """A mode that cannot be used: a bad value, or one that comes too late."""


def _from_value(raw: str) -> str:
    for mode, value in VALUES.items():
        if raw == value:
            return mode
    raise ModeError(f"{ENV}={raw!r}: use 0 (eager, Intel's default) or 1 (lazy)")


def resolve(requested: str | None, env: Mapping[str, str]) -> str:
    """The mode to use: `requested` (flag or GAUDI3_HPU_MODE), else the PT_HPU_LAZY_MODE
    already in the environment (e.g. set in the pod template), else eager."""
    choice = (requested or "").strip().lower()
    if choice:
        if choice not in MODES:
            raise ModeError(f"{SETTING}={requested!r}: use eager or lazy")
        return choice
    raw = env.get(ENV, "").strip()
    return _from_value(raw) if raw else DEFAULT


def bridge_loaded(modules: Mapping[str, object] | None = None) -> bool:
    """True once any part of habana_frameworks is imported in this process."""
    names = sys.modules if modules is None else modules
    return any(name == BRIDGE or name.startswith(BRIDGE + ".") for name in names)


def apply(
    mode: str,
    env: MutableMapping[str, str] | None = None,
    modules: Mapping[str, object] | None = None,
) -> str:
    """Write PT_HPU_LAZY_MODE for `mode` into `env` (this process's environment, which
    the workers inherit). Refuses once the bridge is loaded with another value: it would
    not read the change, and the loop would flush (or not) for the wrong mode."""
    env = os.environ if env is None else env
    if mode not in MODES:
        raise ModeError(f"HPU mode {mode!r}: use eager or lazy")
    value = VALUES[mode]
    before = env.get(ENV)
    if before == value:
        return mode
    if bridge_loaded(modules):
        raise ModeError(
            f"{ENV} must be set before habana_frameworks is imported (Intel's bridge reads "
            f"it once, when it loads, and `import torch` loads it): it is {before!r} in a "
            f"process that already imported it, and {mode} mode needs {value!r}"
        )
    if before is not None:
        log.info("%s=%s replaces %s=%r (%s mode)", ENV, value, ENV, before, mode)
    env[ENV] = value
    return mode


def current(env: Mapping[str, str] | None = None) -> str:
    """The mode this process runs in, as the bridge read it at import: from the inherited
    PT_HPU_LAZY_MODE; unset (a script run without the launcher) is taken as the bridge's
    current default, eager."""
    env = os.environ if env is None else env
    raw = env.get(ENV, "").strip()
    return _from_value(raw) if raw else DEFAULT
