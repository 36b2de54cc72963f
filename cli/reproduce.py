"""`ssrr reproduce NAME`: the seed's experiments (see `ssrr.experiments`) run, resumed, or printed for a cluster."""

from __future__ import annotations

from typing import Any

import typer
from ssrr.cli.common import AMP_HELP, PRECISION_HELP, console, precision_option

from ssrr.experiments import NAMES, SCALES, Plan, Run

NAME_HELP = f"Which experiments: {', '.join(NAMES)} (paper: every table)."
SCALE_HELP = "; ".join(f"{name}: {scale.summary}" for name, scale in SCALES.items())


def reproduce(
    name: str = typer.Argument(..., metavar="NAME", help=NAME_HELP),
    scale: str = typer.Option("full", "--scale", help=f"How big: {SCALE_HELP}."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List one line per run with its status; run nothing."),
    runs: str | None = typer.Option(
        None, "--runs", help="Folder of runs (default: runs for --scale full, runs-small, runs-tiny)."
    ),
    shards_root: str = typer.Option(
        "shards", "--shards-root", help="Where dataset names are looked up: a folder, or an http(s)/s3/gs URL."
    ),
    cache: str | None = typer.Option(
        None, "--cache", help="Cache for shards fetched from a URL (default $SSRR_CACHE or ~/.cache/ssrr)."
    ),
    launch: str | None = typer.Option(
        None,
        "--launch",
        help="Launcher for pretraining, e.g. 'accelerate launch --multi_gpu --num_processes 8' "
        "(default: in this process; with --print-commands: 'accelerate launch').",
    ),
    print_commands: bool = typer.Option(
        False, "--print-commands", help="Print the command lines of the work left (for a cluster); run nothing."
    ),
    only: list[str] = typer.Option(
        [], "--only", help="Only the runs whose name contains this (repeatable, or comma-separated)."
    ),
    report_only: bool = typer.Option(False, "--report-only", help="Only write the report from existing results."),
    amp: bool = typer.Option(False, "--amp/--no-amp", help=AMP_HELP),
    precision: str | None = typer.Option(None, help=PRECISION_HELP),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda (pretraining and evaluation)."),
    quiet: bool = typer.Option(False, "--quiet", help="No live training display."),
    backbone: list[str] = typer.Option(
        [], "--backbone", help="PAPER=NAME: train NAME (e.g. tv:resnet18) where the tables use PAPER (repeatable)."
    ),
) -> None:
    """Reproduce the paper's tables and figures: pretrain, evaluate, report into RUNS/report-NAME/.

    Complete work is skipped (a run whose configured epochs are done, an evaluation whose result exists);
    started runs resume from their last checkpoint. Run it again at any time: it continues where it stopped.

    Examples:

      ssrr reproduce paper --scale small --dry-run                # every run of the seed's tables, with status

      ssrr reproduce table2 --scale tiny                          # for real, minutes on 2 cores (synthetic data)

      ssrr reproduce paper --print-commands --launch "accelerate launch --multi_gpu --num_processes 8"

      ssrr reproduce paper --shards-root https://example.org/shards   # shards fetched and cached first

      ssrr reproduce table2 --scale tiny --backbone conv4=tv:resnet18   # a torchvision model in conv4's place
    """
    from ssrr.experiments import commands, plan
    from ssrr.experiments.scales import get_scale, with_backbones

    planned = plan(
        name,
        with_backbones(get_scale(scale), backbone),
        runs_dir=runs,
        shards_root=shards_root,
        precision=precision_option(precision, amp),
        device=device,
    )
    selected = planned.selected(only)
    if only and not selected:
        from ssrr.errors import SsrrError

        raise SsrrError(f"--only {','.join(only)}: no run of {name} at scale {planned.scale.name} matches")
    if dry_run:
        _list_status(planned, selected, shards_root)
    elif print_commands:
        for line in commands(planned, selected, launch, device):
            typer.echo(line)
    else:
        _run_and_report(planned, selected, report_only, launch=launch, show=not quiet, device=device, cache=cache)


def _list_status(planned: Plan, selected: list[Run], shards_root: str) -> None:
    """`--dry-run`: one line per run with its status, then the counts and the shards still missing."""
    from ssrr.experiments import describe, missing_datasets, shard_hint, status

    missing = missing_datasets(selected, shards_root)
    words = []
    for run in selected:
        state = status(run)
        words.append(state.word)
        typer.echo(describe(run, state, missing))
    counts = ", ".join(f"{words.count(w)} {w}" for w in ("done", "partial", "todo", "conflict") if w in words)
    evaluations = sum(len(run.evaluations) for run in selected)
    typer.echo(
        f"{len(selected)} runs ({counts or 'none'}), {evaluations} evaluations; "
        f"experiment {planned.name}, scale {planned.scale.name}, runs in {planned.runs_dir}"
    )
    if missing:
        typer.echo(f"missing shards: make them with {shard_hint(missing, shards_root)}")


def _run_and_report(planned: Plan, selected: list[Run], report_only: bool, **how: Any) -> None:
    """Pretrain and evaluate what is not complete (unless `report_only`), then write the report."""
    from ssrr.experiments import execute, write_report

    if not report_only:
        counts = execute(planned, selected, log=_print_line, **how)
        done = f"{counts['pretrained']} pretrained, {counts['evaluated']} evaluated"
        console.print(f"{done}, {counts['skipped']} runs done already", highlight=False)
    folder = write_report(planned)
    console.print(f"report: {folder / 'report.md'}", highlight=False, markup=False)


def _print_line(line: str) -> None:
    console.print(line, highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    app.command("reproduce")(reproduce)
