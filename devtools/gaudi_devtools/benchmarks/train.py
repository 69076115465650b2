"""`gaudi3 benchmark train`: the reference workload's throughput on the device present.

A thin front for `gaudi_train.benchmark.run_benchmark` (the launcher's own
`gaudi3-train --benchmark` runs the same code), imported lazily so the operator never
needs torch unless this command runs.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table


def benchmark_train(
    nproc: Annotated[int, typer.Option(min=1, help="Local worker processes (world size).")] = 2,
    steps: Annotated[int, typer.Option(min=1, help="Timed optimizer steps.")] = 50,
    micro_batch: Annotated[int, typer.Option(min=1)] = 8,
    global_batch: Annotated[
        int | None, typer.Option(help="Global batch; default micro-batch x world size.")
    ] = None,
    device: Annotated[str, typer.Option(help="auto | hpu | cuda | cpu")] = "auto",
) -> None:
    """Samples/s and step time of the reference model (CPU/gloo here; HPU in a Gaudi image)."""
    try:
        from gaudi_train.benchmark import run_benchmark
    except ImportError as e:  # torch lives in the `training` extra only
        Console(stderr=True).print(
            f"[red]error:[/] the training extra is not installed ({e}): "
            "pip install 'gaudi-scale-starter[training]'"
        )
        raise typer.Exit(2) from e
    console = Console()
    with console.status(f"training {steps} steps on {nproc} process(es)"):
        r = run_benchmark(
            nproc=nproc,
            steps=steps,
            micro_batch=micro_batch,
            global_batch=global_batch,
            device=device,
        )
    table = Table(title="gaudi3 benchmark train")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key in (
        "device",
        "backend",
        "world_size",
        "global_batch",
        "micro_batch",
        "accumulation_steps",
        "samples_per_second",
        "tokens_per_second",
        "step_seconds_mean",
        "step_seconds_p50",
        "step_seconds_max",
        "timed_steps",
        "parameters",
        "torch_version",
    ):
        value = r.get(key)
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)
