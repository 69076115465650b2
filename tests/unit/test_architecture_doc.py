"""docs/ names only functions, classes and modules that exist: every dotted name in
backticks that starts with one of our packages must import (a module) or resolve (an
attribute of one)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).parents[2] / "docs"
DOTTED = re.compile(r"`((?:gaudi_operator|gaudi_devtools|gaudi_train|gaudi_kubectl)(?:\.\w+)+)`")


def resolve(name: str) -> object:
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(name)


NAMES = sorted({m for doc in DOCS.glob("*.md") for m in DOTTED.findall(doc.read_text())})


def test_architecture_walks_name_real_functions() -> None:
    text = (DOCS / "architecture.md").read_text()
    assert len(DOTTED.findall(text)) >= 30  # the two walks are told through named functions


@pytest.mark.parametrize("name", NAMES)
def test_every_dotted_name_in_docs_resolves(name: str) -> None:
    resolve(name)
