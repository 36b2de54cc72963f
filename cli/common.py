"""Pieces every command shares: the console, a group that turns SsrrError into one line, a default subcommand."""

from __future__ import annotations

import typer
from rich.console import Console
from typer.core import TyperGroup

from ssrr.errors import SsrrError

console = Console(stderr=True)  # progress and tables; stdout stays clean for --json


class SsrrGroup(TyperGroup):
    """Root group: a user-facing SsrrError becomes `Error: <message>` and exit code 1, not a traceback."""

    def invoke(self, ctx: typer.Context):  # type: ignore[no-untyped-def,override]
        try:
            return super().invoke(ctx)
        except SsrrError as exc:
            # typer bundles its own click: exit through typer so the message is not lost in a traceback.
            typer.echo(f"Error: {exc}", err=True)
            raise typer.Exit(1) from None


class DefaultCommandGroup(TyperGroup):
    """A group whose first argument, when it names no subcommand, goes to the default one.

    So `ssrr shard cifar100` means `ssrr shard make cifar100` while `ssrr shard verify DIR` still works.
    """

    default_command = "make"

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:  # type: ignore[override]
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


def new_app(help: str, group: type[TyperGroup] | None = None) -> typer.Typer:
    return typer.Typer(
        help=help,
        cls=group,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode="rich",
    )


AMP_HELP = "Mixed precision, the same as --precision auto: bf16 where native, fp16 on GPUs without bf16, else fp32."
PRECISION_HELP = "auto, fp32, bf16 (forced, even where emulated) or fp16 (with loss scaling). Overrides --amp."


def precision_option(precision: str | None, amp: bool) -> str:
    """`--precision` wins; `--amp` alone means auto; neither is float32."""
    return precision if precision is not None else ("auto" if amp else "fp32")
