"""`ssrr report RUN...`: the evaluation results of runs as one table, in the layout of the paper's first table."""

from __future__ import annotations

from pathlib import Path

import typer
from ssrr.cli.common import console


def report(
    runs: list[str] = typer.Argument(
        ...,
        metavar="RUN...",
        help="Run folders, eval folders, result JSON files, or folders of runs (searched recursively).",
    ),
    markdown: Path | None = typer.Option(None, "--markdown", help="Also write the table as markdown to FILE."),
    as_json: bool = typer.Option(False, "--json", help="Print the table as one JSON object on stdout."),
    all_columns: bool = typer.Option(False, "--all-columns", help="Show the paper's columns even when empty."),
    curves: Path | None = typer.Option(
        None, "--curves", help="Also draw accuracy against pretraining time (runs made with --eval-every) to FILE.png."
    ),
    final: bool = typer.Option(
        False, "--final", help="The last probe of each run (--eval-every), mean±std over runs named NAME-sSEED."
    ),
) -> None:
    """Compare runs: rows = methods (x backbone), columns = protocols, cells = mean±std over seeds.

    Examples:

      ssrr report runs/                                   # every run and runs/random-*/eval

      ssrr report runs/relational-resnet32-cifar100-s* runs/random-resnet32 --markdown docs/results.md

      ssrr report runs/fast-s1 runs/paper-s1 --curves docs/fast.png   # accuracy vs wall time

      ssrr report runs/ablations --final                  # each setting's last probe over seeds
    """
    if final:
        _final(runs, as_json)
        return
    if curves is not None:
        from ssrr.eval.curves import curves_png, find_curves

        console.print(f"wrote {curves_png(find_curves(list(runs)), curves)}")
        if not _has_results(runs):
            return
    _report(runs, markdown, as_json, all_columns)


def _final(runs: list[str], as_json: bool) -> None:
    import json

    from rich.table import Table

    from ssrr.eval.curves import final_groups, find_curves

    groups = final_groups(find_curves(list(runs)))
    if as_json:
        typer.echo(json.dumps([group.as_dict() for group in groups]))
        return
    table = Table(title="last probe of each run, over seeds")
    for column in ("setting", "probe", "runs", "top-1 (%)", "pretraining (s)"):
        table.add_column(column)
    for group in groups:
        table.add_row(
            group.group,
            group.metric,
            str(len(group.runs)),
            f"{group.mean:.2f} ± {group.std:.2f}",
            f"{group.pretrain_s:.1f}",
        )
    console.print(table)


def _has_results(runs: list[str]) -> bool:
    from ssrr.eval.report import find_results

    return bool(find_results(runs))


def _report(runs: list[str], markdown: Path | None, as_json: bool, all_columns: bool) -> None:
    import json

    from ssrr.errors import SsrrError
    from ssrr.eval.report import build_table, find_results, to_markdown, to_rich
    from ssrr.files import write_text_atomic

    results = find_results(runs)
    if not results:
        raise SsrrError(f"no evaluation results under {', '.join(runs)}: run `ssrr eval ...` first")
    table = build_table(results)
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(markdown, to_markdown(table))
        console.print(f"wrote {markdown}")
    if as_json:
        typer.echo(json.dumps(table.as_dict()))
    else:
        console.print(to_rich(table, all_columns))


def register(app: typer.Typer) -> None:
    app.command("report")(report)
