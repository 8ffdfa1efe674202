"""Commands that packages above the runtime add to ``llasm`` (``llasm export``, from the exporter).

A package names a function under the ``llasm.commands`` entry-point group; it is called with a Typer app of
its own and adds its commands there. They are looked up only when needed (see CommandsWithPlugins).
"""

from __future__ import annotations

import typer
from typer.core import TyperGroup

COMMANDS_GROUP = "llasm.commands"  # entry points: functions that add commands (``register(app)``)


def plugin_commands() -> typer.Typer:
    """The commands that packages above the runtime add (``llasm export``, from the exporter): every
    function named under the ``llasm.commands`` entry-point group is called with a Typer app of its own."""
    from importlib.metadata import entry_points

    extra = typer.Typer()
    for ep in entry_points(group=COMMANDS_GROUP):
        try:
            ep.load()(extra)
        except ImportError:  # a plugin whose package is gone: the runtime's own commands still run
            continue
    return extra


class CommandsWithPlugins(TyperGroup):
    """llasm's commands, and the plugins' looked up only when a name is not llasm's own or the list is
    shown: scanning the installed packages' entry points costs ~0.1 s, on every ``llasm ask`` otherwise."""

    _plugins_loaded = False

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        extra = plugin_commands()
        if extra.registered_commands:
            for name, command in typer.main.get_group(extra).commands.items():
                self.commands.setdefault(name, command)

    def get_command(self, ctx, cmd_name: str):
        found = super().get_command(ctx, cmd_name)
        if found is None:
            self._load_plugins()
            found = super().get_command(ctx, cmd_name)
        return found

    def list_commands(self, ctx) -> list[str]:
        self._load_plugins()
        return super().list_commands(ctx)
