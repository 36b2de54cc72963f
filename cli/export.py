"""`ssrr export` and `ssrr embed`: a run's backbone as a file other tools load, and the features of any images."""

from __future__ import annotations

import typer
from ssrr.cli.common import console

SPEC_HELP = "Run folder, checkpoint folder, backbone .safetensors file, or random:<backbone>."


def export(
    spec: str = typer.Argument(..., metavar="RUN", help=SPEC_HELP),
    format: str = typer.Option(..., "--format", help="torchvision, timm, safetensors, torchscript or onnx."),
    out: str = typer.Option(..., "--out", help="The file to write (replaced atomically)."),
) -> None:
    """Write a run's backbone as a file torchvision, timm, safetensors, TorchScript or ONNX users load.

    torchvision (tv:NAME runs and resnet34): the model's full state dict, its classifier freshly initialised, so
    it loads strictly; set the classifier to Identity for the pooled features:

      model = torchvision.models.resnet18(weights=None)
      model.load_state_dict(torch.load("r18.pt"), strict=True)
      model.fc = torch.nn.Identity()

    A --stem cifar run: first `model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)` and
    `model.maxpool = torch.nn.Identity()`. timm (timm:NAME runs): timm.create_model(NAME, pretrained=True,
    pretrained_cfg_overlay=dict(file=FILE), num_classes=0). Inputs: pixel/255 normalised with the pretraining
    data's mean and std (printed here).

    Examples:

      ssrr export runs/r18 --format torchvision --out r18.pt

      ssrr export runs/c4 --format onnx --out conv4.onnx      # pip install "ssrr[onnx]"
    """
    from ssrr.export import export as run

    done = run(spec, format, out)
    console.print(f"wrote {done.path} ({done.format}, {done.backbone}); load it with:", highlight=False, soft_wrap=True)
    typer.echo(done.load)
    _print_normalisation(spec)


def _print_normalisation(spec: str) -> None:
    """The mean and std the inputs need, when the pretraining shards are at hand."""
    from ssrr.errors import SsrrError
    from ssrr.eval.embed import pretraining_stats
    from ssrr.train.checkpoint import load_backbone

    try:
        manifest = pretraining_stats(load_backbone(spec), None, "shards")
    except SsrrError:
        return
    mean = ", ".join(f"{v:.4f}" for v in manifest.mean)
    std = ", ".join(f"{v:.4f}" for v in manifest.std)
    console.print(f"inputs: pixel/255, normalised with mean ({mean}) and std ({std})", highlight=False, soft_wrap=True)


def embed(
    spec: str = typer.Argument(..., metavar="RUN", help=SPEC_HELP),
    source: str = typer.Argument(..., help="A shard folder, or a folder (tree) of .jpg/.png/.webp/.bmp images."),
    out: str = typer.Option(..., "--out", help="FILE.npy (+ FILE.csv: row,path,label,label_name) or FILE.parquet."),
    split: str | None = typer.Option(None, help="Shards: only this split (default: every split)."),
    batch: int = typer.Option(256, help="Images per forward pass."),
    device: str = typer.Option("auto", help="auto (a GPU when there is one), cpu, cuda, cuda:N."),
    precision: str | None = typer.Option(None, help="fp32, bf16, fp16 or auto (default: the run's)."),
    dataset: str | None = typer.Option(
        None, "--dataset", help="A folder of images: the shards whose mean/std normalise it (default: the run's)."
    ),
    shards_root: str = typer.Option("shards", help="Where dataset names are looked up."),
) -> None:
    """The features of every image of SOURCE through the run's backbone, with its path and label.

    Examples:

      ssrr embed runs/r18 ~/photos --out photos.npy          # photos.npy (N, D) + photos.csv

      ssrr embed runs/r18 shards/photos --split val --out val.parquet   # pip install "ssrr[parquet]"
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from ssrr.errors import SsrrError
    from ssrr.eval.embed import check_output, embed_source, write_embedding
    from ssrr.train.checkpoint import load_backbone

    if batch < 1:
        raise SsrrError(f"--batch must be at least 1, got {batch}")
    path = check_output(out)
    loaded = load_backbone(spec)
    columns = (TextColumn("embed"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("embed", total=None)
        result = embed_source(
            loaded,
            source,
            device=device,
            precision=precision,
            batch=batch,
            split=split,
            stats_from=dataset,
            shards_root=shards_root,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    written = write_embedding(result, path)
    console.print(
        f"{len(result.paths)} images, {result.features.shape[1]} features each, in {result.seconds:.1f} s: "
        f"{result.images_per_s:.0f} images/s ({result.execution.device}, {result.execution.describe()}) -> "
        + ", ".join(str(p) for p in written),
        highlight=False,
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    app.command("export")(export)
    app.command("embed")(embed)
