"""`ssrr shard`: turn a dataset into WebDataset shards (default command `make`), `verify` them, show `info`."""

from __future__ import annotations

import contextlib
import inspect
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text
from ssrr.cli.common import DefaultCommandGroup, console, new_app

from ssrr.data import formats
from ssrr.data.codec import CHOICES, DEFAULT_QUALITY, RAW_MAX_SIDE
from ssrr.data.codec import get as get_encoding
from ssrr.data.sizing import parse_bytes
from ssrr.data.sources import DATASETS, load_dataset
from ssrr.data.sources.base import DEFAULT_WORKERS, ProgressFactory, Tick
from ssrr.data.sources.synthetic import TEST_PER_CLASS, TRAIN_PER_CLASS
from ssrr.data.validation import carve_validation
from ssrr.data.verify import verify_report
from ssrr.data.writer import write_dataset
from ssrr.errors import SsrrError

shard_app = new_app(
    "Turn a dataset into WebDataset shards for training, check them, or show what they hold.\n\n"
    "[bold]ssrr shard DATASET[/] is short for [bold]ssrr shard make DATASET[/].\n\n"
    "Example: [cyan]ssrr shard cifar10 --out shards/[/]",
    group=DefaultCommandGroup,
)

MAX_SHOWN = 50  # problems printed by `verify` before "... and N more"


class _Amount(ProgressColumn):
    """'done/total' in items, or in bytes for the byte-counting tasks (downloads and checksums)."""

    def __init__(self) -> None:
        super().__init__()
        self._items = MofNCompleteColumn()
        self._bytes = DownloadColumn()

    def render(self, task: Task) -> Text:
        if task.fields.get("bytes"):
            return self._bytes.render(task)
        if task.total is None:
            return Text(f"{int(task.completed)}", style="progress.download")
        return self._items.render(task)


@contextlib.contextmanager
def _progress_bars() -> Iterator[ProgressFactory]:
    """A rich progress display on stderr, and a `ProgressFactory` that adds a task to it."""
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        _Amount(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )

    def factory(description: str, total: int | None = None) -> Tick:
        if not progress.live.is_started:  # started by the first task: no empty display before an early error
            progress.start()
        for earlier in progress.tasks:  # steps run one after another: a new one ends the ones before
            if not earlier.finished:
                progress.update(earlier.id, total=earlier.completed)
                progress.stop_task(earlier.id)
        counts_bytes = description.startswith(("download", "checksum"))
        task = progress.add_task(description, total=total, bytes=counts_bytes)

        def tick(n: int) -> None:
            progress.advance(task, n)

        return tick

    try:
        yield factory
    finally:
        if progress.live.is_started:
            progress.stop()


def _human_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} GB"  # pragma: no cover


def _command_line(ctx: typer.Context) -> str:
    """The command as typed, with the options the user gave (so the manifest records how it was made)."""
    words = ["ssrr", "shard", str(ctx.params["dataset"])]
    if ctx.params.get("source_arg") is not None:
        words.append(str(ctx.params["source_arg"]))
    for param in ctx.command.params:
        if param.name in ("dataset", "source_arg") or param.name is None:
            continue
        source = ctx.get_parameter_source(param.name)
        if source is not None and source.name == "COMMANDLINE":  # (typer vendors its own click: compare names)
            words += [param.opts[0], str(ctx.params[param.name])]
    return " ".join(words)


def _help(doc: str | None) -> str:
    """A docstring as command help: each prose paragraph on one line (rich mode keeps single newlines)."""
    paragraphs = inspect.cleandoc(doc or "").split("\n\n")
    return "\n\n".join(p if p.startswith(" ") else " ".join(p.split("\n")) for p in paragraphs)


# The options of `ssrr shard make`, declared once (their defaults and help in one place).
_DATASET = typer.Argument(..., metavar="DATASET", help=f"One of: {', '.join(DATASETS)}.", show_default=False)
_SOURCE_ARG = typer.Argument(None, metavar="SOURCE", help="Same as --source.", show_default=False)
_SOURCE = typer.Option(None, "--source", help="A local archive or extracted folder to use instead of downloading.")
_OUT = typer.Option(Path("shards"), "--out", help="Folder that receives NAME/ with the shards.")
_SEED = typer.Option(0, "--seed", help="Shuffle seed (and the synthetic generator's).")
_ENCODING = typer.Option(
    "auto",
    "--encoding",
    help=f"How pixels are stored: auto, {', '.join(CHOICES)} (auto: raw up to {RAW_MAX_SIDE} px, above it the "
    "source's own encoding; lossless sources stay lossless).",
)
_QUALITY = typer.Option(
    None,
    "--quality",
    help=f"jpeg/webp quality; given, every image is re-encoded at it (default {DEFAULT_QUALITY}, and source "
    "files already in the encoding are stored unchanged).",
    show_default=False,
)
_SHARD_BYTES = typer.Option(
    "256MB",
    "--shard-bytes",
    help="Most bytes per shard: e.g. 256MB, 1GB, 1000000. A split under 8 such shards is cut into 8 smaller "
    "ones (of at least 4MB each), so that every rank of a multi-process run reads several.",
)
_SHARD_SIZE = typer.Option(
    None, "--shard-size", help="At most this many samples per shard (default: no limit).", show_default=False
)
_NAME = typer.Option(
    None, "--name", help="Dataset folder name (default: DATASET, or the folder/archive name for imagefolder)."
)
_CACHE = typer.Option(
    None, "--cache", help="Download cache (default: $SSRR_CACHE or ~/.cache/ssrr).", show_default=False
)
_SIZE = typer.Option(None, "--size", help="imagefolder/tiny-imagenet: image side (default: most common in train).")
_WORKERS = typer.Option(DEFAULT_WORKERS, "--workers", help="Image-decoding processes and image-encoding threads.")
_TRAIN_PER_CLASS = typer.Option(TRAIN_PER_CLASS, "--train-per-class", help="synthetic only.")
_TEST_PER_CLASS = typer.Option(TEST_PER_CLASS, "--test-per-class", help="synthetic only.")
_VAL = typer.Option(
    None,
    "--val",
    help="Carve a validation split of N train images (class-balanced, seeded by --val-seed) to choose settings on; "
    "train keeps the rest, train+val is the whole train split. Default: none.",
    show_default=False,
)
_VAL_SEED = typer.Option(0, "--val-seed", help="Seed of the --val carving.")


def make(
    ctx: typer.Context,
    dataset: str = _DATASET,
    source_arg: Path | None = _SOURCE_ARG,
    source: Path | None = _SOURCE,
    out: Path = _OUT,
    seed: int = _SEED,
    encoding: str = _ENCODING,
    quality: int | None = _QUALITY,
    shard_bytes: str = _SHARD_BYTES,
    shard_size: int | None = _SHARD_SIZE,
    name: str | None = _NAME,
    cache: Path | None = _CACHE,
    size: int | None = _SIZE,
    workers: int = _WORKERS,
    train_per_class: int = _TRAIN_PER_CLASS,
    test_per_class: int = _TEST_PER_CLASS,
    val: int | None = _VAL,
    val_seed: int = _VAL_SEED,
) -> None:
    """Shard DATASET into OUT/NAME/: WebDataset tars of RGB images, DALI indexes, manifest.json.

    Datasets: [bold]cifar10[/], [bold]cifar100[/] (python archives), [bold]stl10[/] (binary archive),
    [bold]tiny-imagenet[/] (zip or folder): downloaded from their official URLs and checked against the
    published MD5 unless --source gives a local archive or folder. [bold]imagefolder[/]: --source is a
    folder or .tar/.tar.gz/.tgz/.zip laid out as split/class/image (under at most one top folder).
    [bold]synthetic[/]: 10 classes of 32x32 shapes generated from --seed, no files.

    Resize policy (imagefolder, tiny-imagenet): every image becomes SIZE x SIZE RGB, SIZE = --size, or
    else the most common min(height, width) of the train split; an image of another size is resized so
    that its shorter side is SIZE (bilinear, antialiased) and centre-cropped.

    Encoding (--encoding): raw pixels up to 64 px (fastest to read, no decoder); above that the source's own
    encoding, its files stored unchanged where they need no resizing (JPEG, PNG, WebP), PNG for lossless
    sources (pixel arrays, BMP, TIFF), JPEG at quality 95 for mixed lossy ones. DALI decodes encoded shards,
    on the GPU with nvJPEG. Shards are cut by bytes (--shard-bytes), optionally capped by --shard-size.

    The output appears only when complete (an interrupted run leaves nothing); the same input and seed give
    byte-identical shards.

    Examples:

      [cyan]ssrr shard cifar10 --out shards/[/]

      [cyan]ssrr shard imagefolder ../shared/data/cifar10-jpeg.tar.gz --name cifar10-jpeg[/]

      [cyan]ssrr shard synthetic --seed 1[/]

      [cyan]ssrr shard cifar10 --val 5000[/]   (a validation split: val 5,000, train 45,000)

      [cyan]ssrr shard imagefolder ~/data/imagenette --name imagenette --encoding jpeg --shard-bytes 256MB[/]
    """
    if source_arg is not None and source is not None and source_arg != source:
        raise SsrrError(f"two sources given: {source_arg} and --source {source}")
    source = source or source_arg
    target_bytes = parse_bytes(shard_bytes)
    if encoding != "auto":
        get_encoding(encoding)  # an unknown one fails before the dataset is read
    started = time.perf_counter()
    reading = dict(source=source, cache=cache, name=name, size=size, seed=seed, workers=workers)
    counts = dict(train_per_class=train_per_class, test_per_class=test_per_class)
    writing: dict[str, Any] = dict(seed=seed, shard_size=shard_size, shard_bytes=target_bytes, quality=quality)
    writing.update(encoding=None if encoding == "auto" else encoding, workers=workers, command=_command_line(ctx))
    carve = (val, val_seed) if val is not None else None
    manifest, total = _read_and_write(dataset, out, {**reading, **counts}, writing, carve)
    _summary(out / manifest.name, manifest, total, time.perf_counter() - started)


def _read_and_write(
    dataset: str, out: Path, reading: dict[str, Any], writing: dict[str, Any], carve: tuple[int, int] | None = None
) -> tuple[formats.Manifest, int]:
    """Read the dataset (`load_dataset` options) and write its shards under `out` (`write_dataset` options),
    each with its progress bar; the manifest and the number of samples written."""
    with _progress_bars() as factory:
        arrays = load_dataset(dataset, progress=factory, **reading)
        if carve is not None:  # --val N: a class-balanced validation split carved out of train
            arrays, _ = carve_validation(arrays, *carve)
        total = sum(len(split.images) for split in arrays.splits.values())
        tick = factory(f"writing {out / arrays.name}", total)
        manifest = write_dataset(arrays, out, progress=lambda _split, n: tick(n), **writing)
    return manifest, total


def _summary(root: Path, manifest: formats.Manifest, total: int, elapsed: float) -> None:
    """The closing table: samples and size per split, then classes, image size, speed and where it went."""
    table = Table(title=escape(manifest.name))
    table.add_column("split")
    table.add_column("samples", justify="right")
    table.add_column("labeled")
    table.add_column("shards", justify="right")
    table.add_column("size on disk", justify="right")
    disk = 0
    for split, info in manifest.splits.items():
        size = sum(s.bytes for s in info.shards)
        disk += size
        labeled = "yes" if info.labeled else "no"
        table.add_row(split, f"{info.samples:,}", labeled, str(len(info.shards)), _human_bytes(size))
    table.add_section()
    shards = sum(len(i.shards) for i in manifest.splits.values())
    table.add_row("all", f"{total:,}", "", str(shards), _human_bytes(disk))
    console.print(table)
    height, width = manifest.image_size
    coarse = f" ({len(manifest.coarse_classes)} coarse)" if manifest.coarse_classes else ""
    console.print(
        f"{manifest.num_classes} classes{coarse}, {height}x{width} RGB as {manifest.encoding}; "
        f"{total:,} images in {elapsed:.1f} s "
        f"({total / max(elapsed, 1e-9):,.0f} images/s) -> [bold]{escape(str(root))}[/]",
        highlight=False,
    )


def verify(
    path: Path = typer.Argument(..., help="A shard folder (with manifest.json), or a dataset name under shards/."),
) -> None:
    """Re-hash every shard against the manifest and check every sample's members, labels and index.

    Exits 1 and names each problem (shard file and sample key) if anything is wrong.

    Example: [cyan]ssrr shard verify shards/cifar10[/]
    """
    root = formats.resolve_dataset(path)
    manifest = formats.load_manifest(root)
    total = sum(info.samples for info in manifest.splits.values())
    with _progress_bars() as factory:
        tick = factory(f"verifying {root}", total)
        _, reports = verify_report(root, progress=tick)
    problems = [p for report in reports.values() for p in report.problems]
    for problem in problems[:MAX_SHOWN]:
        console.print(f"[red]problem[/] {escape(problem)}", highlight=False, soft_wrap=True)
    if len(problems) > MAX_SHOWN:
        console.print(f"... and {len(problems) - MAX_SHOWN} more", highlight=False)
    table = Table(title=escape(str(root)))
    for column in ("split", "shards", "samples", "size", "status"):
        table.add_column(column, justify="right" if column in ("shards", "samples", "size") else "left")
    for split, report in reports.items():
        status = "[green]OK[/]" if not report.problems else f"[red]{len(report.problems)} problem(s)[/]"
        table.add_row(split, str(report.shards), f"{report.samples:,}", _human_bytes(report.bytes), status)
    console.print(table)
    if problems:
        bad = sorted({p.split(":", 1)[0] for p in problems})
        raise SsrrError(f"{root}: {len(problems)} problem(s) in {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")


def info(
    path: Path = typer.Argument(..., help="A shard folder (with manifest.json), or a dataset name under shards/."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON on stdout instead."),
) -> None:
    """Show a shard folder's manifest: image size, classes, splits, statistics, source.

    Example: [cyan]ssrr shard info shards/cifar10 --json[/]
    """
    root = formats.resolve_dataset(path)
    manifest = formats.load_manifest(root)
    if as_json:
        typer.echo(manifest.to_json(), nl=False)
        return
    table = Table(title=escape(str(root)), show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    height, width = manifest.image_size
    table.add_row("name", escape(manifest.name))
    table.add_row("image size", f"{height}x{width} RGB")
    table.add_row("encoding", _encoding_text(manifest))
    table.add_row("classes", escape(f"{manifest.num_classes}: {_names(manifest.classes)}"))
    if manifest.coarse_classes:
        table.add_row("coarse classes", escape(f"{len(manifest.coarse_classes)}: {_names(manifest.coarse_classes)}"))
    table.add_row("mean", ", ".join(f"{v:.4f}" for v in manifest.mean))
    table.add_row("std", ", ".join(f"{v:.4f}" for v in manifest.std))
    for split, split_info in manifest.splits.items():
        size = _human_bytes(sum(s.bytes for s in split_info.shards))
        labeled = "labeled" if split_info.labeled else "unlabeled"
        table.add_row(
            f"split {split}", f"{split_info.samples:,} samples, {labeled}, {len(split_info.shards)} shard(s), {size}"
        )
    table.add_row("evaluated on", str(manifest.held_out_split or "-") + ("" if manifest.eval_split else " (by rule)"))
    carve = manifest.validation_carve
    carved = f" (carved from train: --val {carve['samples']}, seed {carve['seed']})" if carve else ""
    table.add_row("validation", str(manifest.validation_split or "-") + carved)
    table.add_row("seed", str(manifest.seed))
    cap = f", at most {manifest.shard_size:,} samples" if manifest.shard_size else ""
    limit = _human_bytes(manifest.shard_bytes) if manifest.shard_bytes else "unset"
    table.add_row("shard size", f"up to {limit}{cap}")
    table.add_row("source", escape(json.dumps(manifest.source)))
    table.add_row("command", escape(manifest.command))
    table.add_row("made by", f"ssrr {manifest.ssrr_version}, format {manifest.format_version}")
    console.print(table)


def _encoding_text(manifest: formats.Manifest) -> str:
    """'jpeg, quality 95 (240 of 240 source files stored unchanged)': the quality applies to re-encoded images."""
    text = manifest.encoding + (f", quality {manifest.quality}" if manifest.quality is not None else "")
    if manifest.source_files_kept:
        total = sum(split.samples for split in manifest.splits.values())
        text += f" ({manifest.source_files_kept:,} of {total:,} source files stored unchanged)"
    return text


def _names(names: list[str], shown: int = 10) -> str:
    return ", ".join(names[:shown]) + (f", ... ({len(names) - shown} more)" if len(names) > shown else "")


for _command in (make, verify, info):
    shard_app.command(_command.__name__, help=_help(_command.__doc__))(_command)


def register(app: typer.Typer) -> None:
    """Mount `ssrr shard` on the root command."""
    app.add_typer(shard_app, name="shard")
