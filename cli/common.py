"""Pieces every command shares: the console, a group that turns SsrrError into one line, a default subcommand."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

from ssrr.errors import Interrupted, SsrrError
from ssrr.options import check_name, check_numbers

console = Console(stderr=True)  # progress and tables; stdout stays clean for --json


class SsrrGroup(TyperGroup):
    """Root group: a user-facing SsrrError becomes `Error: <message>` and exit code 1, not a traceback; an
    option value of the wrong kind (`--epochs nan`) becomes one `Error:` line and exit code 2; Ctrl-C becomes
    one `interrupted ...` line (what was kept, from `Interrupted`) and exit code 130 (128 + SIGINT)."""

    def invoke(self, ctx: typer.Context):  # type: ignore[no-untyped-def,override]
        try:
            return super().invoke(ctx)
        except Interrupted as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(Interrupted.exit_code) from None
        except KeyboardInterrupt:  # commands that keep nothing half-done (their writes are atomic)
            typer.echo(f"interrupted: ssrr {ctx.invoked_subcommand} stopped before it finished", err=True)
            raise typer.Exit(Interrupted.exit_code) from None
        except SsrrError as exc:
            # typer bundles its own click: exit through typer so the message is not lost in a traceback.
            typer.echo(f"Error: {exc}", err=True)
            raise typer.Exit(1) from None
        except typer.BadParameter as exc:  # a value of the wrong kind (`--epochs nan`): one line too, exit 2
            typer.echo(f"Error: {exc.format_message()}", err=True)
            raise typer.Exit(2) from None


class DefaultCommandGroup(TyperGroup):
    """A group whose first argument, when it names no subcommand, goes to the default one.

    So `ssrr shard cifar100` means `ssrr shard make cifar100` while `ssrr shard verify DIR` still works.
    """

    default_command = "make"

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:  # type: ignore[override]
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


class CheckedCommand(TyperCommand):
    """A command whose options are checked before it runs: every number finite and in its range, every
    `--name` a plain folder name (`ssrr.options`). A bad one is an SsrrError: one line, exit 1, nothing written."""

    def invoke(self, ctx: typer.Context) -> Any:  # type: ignore[override]  # typer >= 0.2x types it with its bundled click
        check_numbers(ctx.params)
        if ctx.params.get("name"):
            check_name(str(ctx.params["name"]))
        return super().invoke(ctx)


class _CheckedTyper(typer.Typer):
    """A Typer app whose commands are `CheckedCommand`s unless told otherwise."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:  # type: ignore[override]
        kwargs.setdefault("cls", CheckedCommand)
        return super().command(*args, **kwargs)


def new_app(help: str, group: type[TyperGroup] | None = None) -> typer.Typer:
    return _CheckedTyper(
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
