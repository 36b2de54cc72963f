"""`ssrr import official FILE`: the authors' released checkpoints as an ssrr run folder."""

from __future__ import annotations

from pathlib import Path

import typer
from ssrr.cli.common import console, new_app

import_app = new_app(
    "Import weights trained elsewhere as a run folder every `ssrr eval` protocol accepts.\n\n"
    "Example: [bold]ssrr import official relationnet_cifar10_resnet56_seed_1_epoch_500.tar "
    "--backbone resnet56 --name official-resnet56-cifar10[/]"
)


@import_app.command("official")
def official(
    file: Path = typer.Argument(..., help="A checkpoint of the authors' public implementation (.tar/.pt/.pth)."),
    backbone: str = typer.Option(..., "--backbone", help="Its backbone: conv4, resnet8, resnet32, resnet56, resnet34."),
    name: str = typer.Option(..., "--name", help="Name of the run folder to write (RUNS/NAME)."),
    out: str = typer.Option("runs", "--out", help="Folder of runs the run folder goes into."),
    dataset: str = typer.Option(
        "", "--dataset", help="The dataset it was pretrained on (the default of `ssrr eval --dataset`)."
    ),
) -> None:
    """Read an authors' checkpoint safely (torch.load weights_only=True: tensors only), map their parameter
    names to ssrr's and write RUNS/NAME: config.json, backbone.safetensors, the relation head, import.json.

    Example: ssrr import official relationnet_cifar10_resnet56_seed_1_epoch_500.tar --backbone resnet56
    --name official-c10 --dataset cifar10, then: ssrr eval linear runs/official-c10 --json
    """
    from ssrr.official import import_official

    run_dir = import_official(file, backbone, name, out=out, dataset=dataset)
    console.print(f"imported {file} ({backbone}) into {run_dir}")


def register(app: typer.Typer) -> None:
    app.add_typer(import_app, name="import")
