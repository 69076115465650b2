"""`gaudi3 benchmark …`: measured figures for the README (train, failover, autoscale,
reconcile, latency, takeover, soak, recovery, inplace, goodput, rest); `support` holds what they
share. Loaded only when `gaudi3 benchmark` runs."""

from __future__ import annotations

import typer

from gaudi_devtools.benchmarks import failover, goodput, inplace, recovery
from gaudi_devtools.benchmarks.autoscale import benchmark_autoscale
from gaudi_devtools.benchmarks.latency import benchmark_latency
from gaudi_devtools.benchmarks.reconcile import benchmark_reconcile
from gaudi_devtools.benchmarks.rest import benchmark_rest
from gaudi_devtools.benchmarks.soak import benchmark_soak
from gaudi_devtools.benchmarks.takeover import takeover
from gaudi_devtools.benchmarks.train import benchmark_train

benchmark_app = typer.Typer(
    help="Measure speed and latency on the local cluster or device.", no_args_is_help=True
)
benchmark_app.command("autoscale")(benchmark_autoscale)
benchmark_app.command("train")(benchmark_train)
benchmark_app.command("reconcile")(benchmark_reconcile)
benchmark_app.command("latency")(benchmark_latency)
benchmark_app.command("takeover")(takeover)
benchmark_app.command("soak")(benchmark_soak)
benchmark_app.command("rest")(benchmark_rest)
failover.register(benchmark_app)
recovery.register(benchmark_app)
inplace.register(benchmark_app)
goodput.register(benchmark_app)
