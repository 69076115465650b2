"""`gaudi3`: the one entry point. Sub-commands live in modules named for what they do."""

from __future__ import annotations

import typer

from gaudi_operator import benchmark_failover
from gaudi_operator.benchmark_autoscale import benchmark_autoscale
from gaudi_operator.benchmark_reconcile import benchmark_reconcile
from gaudi_operator.benchmark_train import benchmark_train
from gaudi_operator.cluster_cli import cluster_app
from gaudi_operator.demo import demo
from gaudi_operator.operator_cli import run_operator

app = typer.Typer(
    help="Gaudi Scale Starter: distributed PyTorch training on Intel Gaudi 3 in Kubernetes.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(cluster_app, name="cluster")
app.command("operator")(run_operator)
app.command()(demo)

benchmark_app = typer.Typer(
    help="Measure speed and latency on the local cluster or device.", no_args_is_help=True
)
app.add_typer(benchmark_app, name="benchmark")
benchmark_app.command("autoscale")(benchmark_autoscale)
benchmark_app.command("train")(benchmark_train)
benchmark_app.command("reconcile")(benchmark_reconcile)
benchmark_failover.register(benchmark_app)


def main() -> None:
    app()
