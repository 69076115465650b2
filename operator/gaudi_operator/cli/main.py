"""`gaudi3`: the one entry point.

`gaudi3 operator` and `gaudi3 preflight` live here. Other packages add sub-commands through
the entry-point group `gaudi3.commands` (the dev tools add `cluster`, `benchmark` and
`demo`); each is imported only when it is run or listed, so `gaudi3 operator` never loads
them and the operator image, which does not install them, simply has no such commands.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

import click
import typer
from typer.core import TyperGroup

from gaudi_operator.cli.operator_command import run_operator
from gaudi_operator.cli.preflight_command import run_preflight

PLUGIN_GROUP = "gaudi3.commands"


def _as_click(obj: Any, name: str) -> click.Command:
    if isinstance(obj, click.Command):
        return obj
    if not isinstance(obj, typer.Typer):  # a plain function: a one-command app
        single = typer.Typer(pretty_exceptions_show_locals=False)
        single.command(name)(obj)
        obj = single
    command = typer.main.get_command(obj)
    command.name = name
    return command


class PluginGroup(TyperGroup):
    """Commands of this package plus the entry-point plugins, loaded on first use."""

    def _plugins(self) -> dict[str, str]:
        return {ep.name: ep.value for ep in entry_points(group=PLUGIN_GROUP)}

    def list_commands(self, ctx: click.Context) -> list[str]:
        own = super().list_commands(ctx)
        return own + sorted(n for n in self._plugins() if n not in own)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        found = super().get_command(ctx, cmd_name)
        if found is not None:
            return found
        target = self._plugins().get(cmd_name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        return _as_click(getattr(importlib.import_module(module), attr), cmd_name)


app = typer.Typer(
    cls=PluginGroup,
    help="Gaudi Scale Starter: distributed PyTorch training on Intel Gaudi 3 in Kubernetes.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.command("operator")(run_operator)
app.command("preflight")(run_preflight)


@app.callback()
def _root() -> None:
    # A callback keeps `gaudi3` a group even where `operator` is its only own command.
    pass


def main() -> None:
    app()


if __name__ == "__main__":
    main()
