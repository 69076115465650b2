"""The elastic training launcher that runs inside every GaudiTrainingJob worker pod.

Importing the package is cheap and torch-free (the operator imports
`gaudi_train.batching`); `init` and `Session`, the helper API for training scripts,
load torch on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gaudi_train.session import Session, init

__all__ = ["Session", "init"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from gaudi_train import session

        return getattr(session, name)
    raise AttributeError(f"module 'gaudi_train' has no attribute {name!r}")
