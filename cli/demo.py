"""`ssrr demo`: the README's main job on the embedded data."""

from __future__ import annotations

import json

import typer
from rich.table import Table
from ssrr.cli.common import console

from ssrr.demo import DEMO_LINEAR_EPOCHS, DEMO_SETTINGS


def demo(
    shards: str = typer.Option("shards", help="Where the synthetic shards are written."),
    out: str = typer.Option("runs", help="Folder of runs (the demo's run is runs/demo, demo-2, ...)."),
    seed: int = typer.Option(1, help="Seed of pretraining and evaluation."),
    epochs: int = typer.Option(DEMO_SETTINGS["epochs"], help="Pretraining epochs."),
    k: int = typer.Option(DEMO_SETTINGS["k"], "--k", help="Views per image."),
    linear_epochs: int = typer.Option(DEMO_LINEAR_EPOCHS, help="Linear-evaluation epochs (the paper's protocol)."),
    as_json: bool = typer.Option(False, "--json", help="Also print the results as one JSON object."),
) -> None:
    """Shard the embedded synthetic data, pretrain conv4 (relational, K views), then linear evaluation of the
    learned backbone against random weights. About 3 minutes on 2 CPU cores.

    Example: ssrr demo
    """
    from ssrr.demo import run_demo

    result = run_demo(shards=shards, out=out, seed=seed, epochs=epochs, k=k, linear_epochs=linear_epochs)
    table = Table(title=f"linear evaluation on {result.shard_dir} (test split)")
    for column in ("backbone", "top-1 %", "top-5 %"):
        table.add_column(column, justify="right" if "%" in column else "left")
    table.add_row(
        f"relational ({result.run.run_dir})", f"{result.learned['top1']:.2f}", f"{result.learned['top5']:.2f}"
    )
    table.add_row("random weights (lower bound)", f"{result.random['top1']:.2f}", f"{result.random['top5']:.2f}")
    console.print(table)
    margin = round(result.learned["top1"] - result.random["top1"], 2)
    console.print(f"learned - random: [bold]{margin:+.2f}[/] points top-1; whole demo {result.wall_s:.0f} s")
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "run": str(result.run.run_dir),
                    "learned_top1": result.learned["top1"],
                    "random_top1": result.random["top1"],
                    "margin": margin,
                    "wall_s": result.wall_s,
                    "views_per_s": result.run.throughput.get("views_per_s"),
                }
            )
        )


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
