"""Fake `habana_frameworks.torch.core` ("htcore"): mark_step, and the `hpu_backend`
that torch.compile finds once it is imported."""

from __future__ import annotations

from typing import Any

from habana_frameworks import _fake

_fake.record("import", module=__name__, env=_fake.environment())


def mark_step(device_str: str = "", sync: bool = False) -> None:
    _fake.record("mark_step")


def _hpu_backend(graph: Any, example_inputs: list[Any]) -> Any:
    """A TorchDynamo backend that records its use and runs the captured graph as is."""
    _fake.record("compile", backend="hpu_backend", nodes=len(graph.graph.nodes))
    return graph.forward


def _register() -> None:
    import torch._dynamo

    if "hpu_backend" not in torch._dynamo.list_backends(exclude_tags=()):
        torch._dynamo.register_backend(name="hpu_backend")(_hpu_backend)


_register()
