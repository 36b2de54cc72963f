"""`ssrr`: the root command. Each command group lives in its own module and is mounted here."""

from __future__ import annotations

import typer
from ssrr.cli.common import SsrrGroup, new_app

from ssrr import __version__

app = new_app(
    "Self-Supervised Relational Reasoning: shard a dataset, pretrain, evaluate, report.\n\n"
    "Flow: [bold]ssrr shard[/] -> [bold]ssrr pretrain[/] -> runs/NAME -> [bold]ssrr eval[/] -> "
    "[bold]ssrr report[/].",
    group=SsrrGroup,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ssrr {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Self-Supervised Relational Reasoning (Patacchiola & Storkey, NeurIPS 2020)."""


_COMMAND_MODULES = (
    "demo",
    "shard",
    "pretrain",
    "evaluate",
    "report",
    "bench",
    "reproduce",
    "importer",
    "export",
    "env",
)
_mounted = False


def _mount() -> None:
    """Register every command group on `app` (once). Imported here so `ssrr --version` stays fast."""
    global _mounted
    if _mounted:
        return
    import importlib

    for name in _COMMAND_MODULES:
        importlib.import_module(f"ssrr.cli.{name}").register(app)
    _mounted = True


def main() -> None:
    _mount()
    app()
