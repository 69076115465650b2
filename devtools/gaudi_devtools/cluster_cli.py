"""`gaudi3 cluster …`: the embedded local cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from gaudi_devtools.cluster import Cluster, ClusterError, nodes
from gaudi_devtools.cluster.cluster import CLUSTERS, Settings
from gaudi_devtools.cluster.processes import rss_bytes

console = Console(stderr=True)
cluster_app = typer.Typer(
    help="The local control plane with simulated Gaudi 3 nodes.", no_args_is_help=True
)

NameOpt = Annotated[str, typer.Option("--name", "-n", help="Cluster name.")]


def _cluster(name: str) -> Cluster:
    try:
        return Cluster(name, say=lambda m: console.print(f"[bold cyan]>[/] {m}"))
    except ClusterError as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from e


@cluster_app.command()
def up(
    name: NameOpt = "gaudi3",
    gaudi_nodes: Annotated[
        int, typer.Option(min=1, max=nodes.MAX_NODES, help="Simulated Gaudi 3 nodes.")
    ] = 4,
    hpus_per_node: Annotated[int, typer.Option(min=1, max=8, help="habana.ai/gaudi per node.")] = 8,
    node_monitor_grace: Annotated[
        int,
        typer.Option(
            min=2, help="Seconds before kube-controller-manager marks a silent node Unknown."
        ),
    ] = 40,
    eviction_seconds: Annotated[
        int,
        typer.Option(
            min=0, help="Default not-ready/unreachable toleration (Kubernetes default 300)."
        ),
    ] = 300,
    kueue: Annotated[
        bool, typer.Option("--kueue", help="Also run Kueue (built by hack/toolchain.sh).")
    ] = False,
    real_nodes: Annotated[
        int,
        typer.Option(
            min=0,
            max=32,
            help="Real nodes (kubelet + containerd, host network on 127.0.20.x) beside the "
            "simulated ones.",
        ),
    ] = 0,
    audit_log: Annotated[
        bool,
        typer.Option(
            "--audit-log/--no-audit-log",
            help="The API server records every write (verb, object, user, User-Agent, time) "
            "in logs/audit.log.",
        ),
    ] = True,
    preload_image: Annotated[
        list[Path] | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="An image archive every real node starts with (repeatable): unpacked once "
            "and shared, instead of `import-image` into each node.",
        ),
    ] = None,
) -> None:
    """Start (or keep) the cluster; `up` twice is harmless."""
    c = _cluster(name)
    try:
        c.up(
            Settings(
                gaudi_nodes=gaudi_nodes,
                hpus_per_node=hpus_per_node,
                node_monitor_grace_seconds=node_monitor_grace,
                eviction_seconds=eviction_seconds,
                real_nodes=real_nodes,
                real_node_images=[str(p.resolve()) for p in preload_image or []],
                audit_log=audit_log,
            )
        )
        if kueue:
            from gaudi_devtools import kueue as kueue_process

            kueue_process.start(c)
    except ClusterError as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(1) from e
    console.print(f"[green]cluster {name!r} is up[/]: {c.apiserver_url}")
    console.print(f"  kubeconfig  {c.kubeconfig}")
    console.print(f"  prometheus  {c.prometheus_url}")
    console.print(f"  logs        {c.dir / 'logs'}")
    if c.settings and c.settings.audit_log:
        console.print(f"  audit log   {c.audit_log}")
    console.print(f'  use it:     eval "$(gaudi3 cluster env --name {name})"')


@cluster_app.command()
def down(
    name: NameOpt = "gaudi3",
    all_: Annotated[bool, typer.Option("--all", help="Stop every local cluster.")] = False,
    delete: Annotated[bool, typer.Option(help="Also delete its folder (PKI, logs).")] = False,
) -> None:
    """Stop every process of the cluster."""
    names = sorted(p.name for p in CLUSTERS.iterdir()) if all_ and CLUSTERS.exists() else [name]
    for n in names:
        c = _cluster(n)
        stopped = c.down()
        if delete:
            c.delete()
        console.print(
            f"cluster {n!r}: "
            + (f"stopped {', '.join(stopped)}" if stopped else "nothing was running")
        )


@cluster_app.command()
def status(name: NameOpt = "gaudi3") -> None:
    """What runs, on which port, how often the supervisor restarted it, its memory."""
    c = _cluster(name)
    s = c.settings
    restarts = c.restarts()
    last = {r["component"]: r for r in c.procs.restarts()}
    table = Table(title=f"cluster {name!r}")
    table.add_column("component")
    table.add_column("pid")
    table.add_column("port")
    table.add_column("restarts", justify="right")
    table.add_column("last exit")
    table.add_column("RSS", justify="right")

    def rss(pid: int | None) -> str:
        size = rss_bytes(pid) if pid else None
        return f"{size / 2**20:.0f} MiB" if size is not None else ""

    sup = c.procs.supervisor_pid()
    table.add_row("supervisor", str(sup) if sup else "[red]not running[/]", "", "", "", rss(sup))
    for comp, pid in c.processes().items():
        port = str(s.ports.get(comp, "")) if s else ""
        r = last.get(comp)
        exit_text = f"{r['exit_code']} at {r['time']}" if r else ""
        table.add_row(
            comp,
            str(pid) if pid else "[red]not running[/]",
            port,
            str(restarts.get(comp, 0)),
            exit_text,
            rss(pid),
        )
    Console(width=200).print(table)
    if c.healthy() and s is not None and s.gaudi_nodes > 32:
        ready, total = c.ready_nodes()
        print(f"{total} Gaudi nodes, {ready} Ready, {s.hpus_per_node} HPUs each")
    elif c.healthy():
        out = c.kubectl(
            "get",
            "nodes",
            "-o",
            "custom-columns=NODE:.metadata.name,"
            "READY:.status.conditions[?(@.type=='Ready')].status,"
            "HPUS:.status.allocatable.habana\\.ai/gaudi,"
            "REAL:.metadata.labels.gaudi3\\.scalestarter\\.dev/real-node,"
            "ADDRESS:.status.addresses[0].address",
            check=False,
        )
        print(out.stdout, end="")
    else:
        console.print("API server: [red]not healthy[/]")
        raise typer.Exit(1)


@cluster_app.command("import-image")
def import_image(
    archive: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Image archive.")],
    name: NameOpt = "gaudi3",
) -> None:
    """Load an image archive (from hack/build-images.sh) into every real node."""
    c = _cluster(name)
    try:
        done = c.real_nodes.import_image(archive)
    except (RuntimeError, ClusterError) as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(1) from e
    if not done:
        console.print(f"[red]error:[/] cluster {name!r} has no running real nodes")
        raise typer.Exit(1)
    console.print(f"imported {archive.name} into {', '.join(done)}")


@cluster_app.command()
def env(name: NameOpt = "gaudi3") -> None:
    """Print shell exports for the cluster: eval "$(gaudi3 cluster env)"."""
    c = _cluster(name)
    if c.settings is None:
        console.print(f"[red]error:[/] cluster {name!r} is not up: run `gaudi3 cluster up`")
        raise typer.Exit(1)
    print(f"export KUBECONFIG={c.kubeconfig}")
    print(f"export GAUDI3_PROMETHEUS_URL={c.prometheus_url}")
    print(f"export PATH={c.tool('kubectl').rsplit('/', 1)[0]}:$PATH")
