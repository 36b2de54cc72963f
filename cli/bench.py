"""`ssrr bench ...`: benchmarks measured side by side with their baseline; results go to docs/benchmarks.md."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from ssrr.cli.common import AMP_HELP, PRECISION_HELP, console, new_app, precision_option

from ssrr.bench.record import record
from ssrr.options import backbone_tag

bench_app = new_app("Benchmarks: ours against the baseline, side by side in one run, medians of repeats.")

RECORD_HELP = "Write the result into docs/benchmarks.md."


# Options several benchmarks share, declared once (one default, one help text).
Dataset = typer.Option("shards/cifar10-jpeg", help="Shard folder or name to read.")
Backbone = typer.Option("conv4", help="Backbone: conv4, resnet8/32/56, resnet34, tv:NAME (torchvision) or timm:NAME.")
K = typer.Option(32, "--k", help="Views per image.")
Batch = typer.Option(64, help="Images per step (M).")
Amp = typer.Option(True, "--amp/--no-amp", help=AMP_HELP + " Both sides.")
Precision = typer.Option(None, help=PRECISION_HELP)
Device = typer.Option("auto", help="auto, cpu or cuda.")
AsJson = typer.Option(False, "--json", help="Print one JSON object.")
Record = typer.Option(True, "--record/--no-record", help=RECORD_HELP)


def _emit(name: str, result: dict, as_json: bool, write: bool) -> None:
    if write:
        record(name, result)
    if as_json:
        typer.echo(json.dumps(result))
    else:
        console.print_json(json.dumps(result))


@bench_app.command("pipeline")
def pipeline(
    dataset: str = Dataset,
    k: int = K,
    batch: int = Batch,
    device: str = typer.Option("cpu", help="cpu, gpu (= cuda) or auto."),
    repeats: int = typer.Option(5, help="Repeats (medians reported)."),
    steps: int = typer.Option(20, help="Steps timed per repeat."),
    workers: int = typer.Option(2, help="DataLoader workers of the torchvision baseline."),
    as_json: bool = AsJson,
    write: bool = Record,
) -> None:
    """Views/s of the DALI pipeline vs the torchvision reference (K transforms per image in workers).

    Example: ssrr bench pipeline --k 32 --batch 64 --device cpu --json
    """
    from ssrr.bench.pipeline import bench_pipeline
    from ssrr.data.formats import resolve_dataset

    shard_dir = resolve_dataset(dataset)
    from ssrr.devices import choose_device

    device = choose_device(device).type  # gpu = cuda: the DALI pipeline on the GPU, batches left there
    result = bench_pipeline(shard_dir, k=k, batch=batch, device=device, repeats=repeats, steps=steps, workers=workers)
    dataset_tag = "" if shard_dir.name == "cifar10-jpeg" else f"-{shard_dir.name}"  # other data: its own record
    _emit(f"pipeline-{device}-k{k}-m{batch}{dataset_tag}", result, as_json, write)


@bench_app.command("step")
def step(
    backbone: str = Backbone,
    k: int = K,
    batch: int = Batch,
    amp: bool = Amp,
    precision: str | None = Precision,
    channels_last: bool = typer.Option(True, "--channels-last/--no-channels-last", help="NHWC (ours)."),
    compile: bool = typer.Option(False, "--compile/--no-compile", help="torch.compile the backbone (ours)."),
    repeats: int = typer.Option(5, help="Timed steps of ours (median)."),
    baseline_repeats: int = typer.Option(3, help="Timed steps of the public-code-style baseline (0: skip)."),
    side: int = typer.Option(32, "--side", min=8, help="Side of the (random) views in pixels."),
    device: str = Device,
    as_json: bool = AsJson,
    write: bool = Record,
) -> None:
    """One training step, model only, and the relation stage alone, each against the literal baseline.

    Examples:

      ssrr bench step --backbone conv4 --k 32 --batch 64 --json

      ssrr bench step --backbone tv:resnet50 --side 224 --k 4 --batch 8 --repeats 3 --baseline-repeats 0 --json
    """
    from ssrr.bench.step import bench_model_step, bench_relation_stage

    relation = bench_relation_stage(k=k, m=batch)
    model = bench_model_step(
        backbone=backbone,
        k=k,
        m=batch,
        precision=precision_option(precision, amp),
        channels_last=channels_last,
        compile=compile,
        repeats=repeats,
        baseline_repeats=baseline_repeats,
        image_size=side,
        device=device,
    )
    side_tag = "" if side == 32 else f"-{side}px"  # the 32-px records keep their names
    _emit(
        f"step-{backbone_tag(backbone)}{side_tag}-k{k}-m{batch}-{model['precision']}",
        {**model, **relation},
        as_json,
        write,
    )


@bench_app.command("e2e")
def e2e(
    dataset: str = Dataset,
    backbone: str = Backbone,
    k: int = K,
    batch: int = Batch,
    amp: bool = Amp,
    precision: str | None = Precision,
    steps: int = typer.Option(20, help="Timed steps per repeat (after warm-up)."),
    repeats: int = typer.Option(3, help="Repeats (median)."),
    baseline_steps: int = typer.Option(5, help="Timed steps of the public-code-style baseline (0: skip)."),
    compile: bool = typer.Option(False, "--compile/--no-compile", help="torch.compile the backbone (ours)."),
    authors: bool = typer.Option(
        True, "--authors/--no-authors", help="Also time the public code as its authors run it (fp32, NCHW, 2 workers)."
    ),
    authors_code: Path | None = typer.Option(
        None,
        "--authors-code",
        metavar="DIR",
        help="A checkout of the authors' repository: time their own training loop there (else ssrr's transcription).",
    ),
    device: str = Device,
    as_json: bool = AsJson,
    write: bool = Record,
) -> None:
    """End-to-end pretraining views/s (DALI pipeline + model step) and the share of time waiting for data.

    Example: ssrr bench e2e --dataset shards/cifar10-jpeg --backbone conv4 --k 32 --batch 64 --json
    """
    from ssrr.bench.e2e import bench_e2e
    from ssrr.data.formats import resolve_dataset

    result = bench_e2e(
        resolve_dataset(dataset),
        backbone=backbone,
        k=k,
        m=batch,
        precision=precision_option(precision, amp),
        steps=steps,
        repeats=repeats,
        baseline_steps=baseline_steps,
        device=device,
        compile=compile,
        authors=authors,
        authors_code=authors_code,
    )
    _emit(
        f"e2e-{backbone_tag(backbone)}-k{k}-m{batch}-{result['device']}-{result['precision']}"
        + ("-compiled" if compile else "")
        + ("-vs-authors-code" if authors_code else ""),  # its own record: `just bench` keeps the transcription's
        result,
        as_json,
        write,
    )


@bench_app.command("methods")
def methods(
    dataset: str = Dataset,
    names: str = typer.Option(
        "relational,simclr,rotation,deepcluster,infomax,supervised", "--methods", help="Comma-separated methods."
    ),
    backbone: str = Backbone,
    k: int = typer.Option(32, "--k", help="Views per image (relational)."),
    batch: int = Batch,
    amp: bool = Amp,
    precision: str | None = Precision,
    steps: int = typer.Option(10, help="Timed steps per method and repeat (after warm-up)."),
    repeats: int = typer.Option(3, help="Repeats, round-robin over the methods (median)."),
    device: str = Device,
    as_json: bool = AsJson,
    write: bool = Record,
) -> None:
    """Training views/s of every method (its pipeline + step), side by side with relational reasoning.

    Example: ssrr bench methods --dataset shards/cifar10-jpeg --backbone conv4 --k 32 --batch 64 --json
    """
    from ssrr.bench.methods import bench_methods
    from ssrr.data.formats import resolve_dataset
    from ssrr.methods import method_class

    chosen = tuple(name.strip() for name in names.split(",") if name.strip())
    for name in chosen:
        method_class(name)  # an unknown name is a one-line error before anything runs
    result = bench_methods(
        resolve_dataset(dataset),
        methods=chosen,
        backbone=backbone,
        k=k,
        m=batch,
        precision=precision_option(precision, amp),
        steps=steps,
        repeats=repeats,
        device=device,
    )
    _emit(
        f"methods-{backbone_tag(backbone)}-k{k}-m{batch}-{result['device']}-{result['precision']}",
        result,
        as_json,
        write,
    )


@bench_app.command("accuracy")
def accuracy(
    dataset: str = typer.Option("shards/synthetic", help="Shard folder or name."),
    backbone: str = Backbone,
    k: int = typer.Option(4, "--k", help="Views per image."),
    batch: int = Batch,
    epochs: int = typer.Option(2, help="Pretraining epochs, both ways."),
    linear_epochs: int = typer.Option(100, help="Linear-evaluation epochs (the protocol: 100)."),
    seeds: str = typer.Option("1,2,3", help="Seeds, comma-separated: ours and the baseline each run every seed."),
    target_top1: float | None = typer.Option(
        None, "--target-top1", help="Probe 4 times an epoch; report the pretraining time to this linear top-1 (%)."
    ),
    amp: bool = typer.Option(False, "--amp/--no-amp", help=AMP_HELP + " Both sides."),
    precision: str | None = Precision,
    device: str = typer.Option("auto", help="auto, cpu or cuda (both sides)."),
    as_json: bool = AsJson,
    write: bool = Record,
) -> None:
    """Time to an accuracy: pretraining wall time and linear top-1 over seeds, ours against the public code's way.

    Example: ssrr bench accuracy --dataset shards/cifar10-jpeg --backbone conv4 --k 4 --epochs 3 --target-top1 45 --json
    """
    from ssrr.bench.accuracy import bench_time_to_accuracy
    from ssrr.data.formats import resolve_dataset
    from ssrr.errors import SsrrError

    try:
        chosen = [int(seed) for seed in seeds.split(",") if seed.strip()]
    except ValueError as exc:
        raise SsrrError(f"--seeds must be integers separated by commas, got {seeds!r}") from exc
    if not chosen:
        raise SsrrError("--seeds: give at least one seed")
    result = bench_time_to_accuracy(
        resolve_dataset(dataset),
        backbone=backbone,
        k=k,
        m=batch,
        epochs=epochs,
        seeds=chosen,
        linear_epochs=linear_epochs,
        precision=precision_option(precision, amp),
        device=device,
        target_top1=target_top1,
    )
    name = Path(result["dataset"]).name
    _emit(f"accuracy-{backbone_tag(backbone)}-{name}-k{k}-e{epochs}-{result['precision']}", result, as_json, write)


@bench_app.command("shard")
def shard(
    source: Path = typer.Option(Path("../shared/data/cifar10-jpeg.tar.gz"), help="ImageFolder archive to shard."),
    out: Path = typer.Option(Path("/tmp/ssrr-bench-shards"), help="Scratch output folder."),
    repeats: int = typer.Option(1, help="Repeats (median)."),
    encodings: str = typer.Option(
        "",
        "--encodings",
        help="Compare these shard encodings (e.g. raw,jpeg,png,webp) on the source upscaled to --side px: "
        "shard size, sharding time, pipeline views/s. Empty: time sharding the source as it is.",
    ),
    side: int = typer.Option(96, "--side", min=8, help="--encodings: image side of the upscaled source."),
    per_class: int = typer.Option(100, "--per-class", min=1, help="--encodings: train images per class."),
    k: int = typer.Option(4, "--k", min=1, help="--encodings: views per image in the pipeline."),
    steps: int = typer.Option(10, "--steps", min=1, help="--encodings: pipeline steps timed per repeat."),
    as_json: bool = AsJson,
    write: bool = Record,
) -> None:
    """Time to shard an ImageFolder archive, and the read speed of the raw encoding vs PNG and JPEG; or, with
    --encodings, the encodings compared on larger images.

    Example: ssrr bench shard --source ../shared/data/cifar10-jpeg.tar.gz --json

    Example: ssrr bench shard --encodings raw,jpeg,png,webp --side 96 --per-class 100 --json
    """
    if encodings:
        from ssrr.bench.encodings import bench_encodings

        names = tuple(name.strip() for name in encodings.split(",") if name.strip())
        result = bench_encodings(
            source, out, side=side, per_class=per_class, encodings=names, k=k, steps=steps, repeats=max(repeats, 1)
        )
        _emit(f"shard-encodings-{side}px", result, as_json, write)
        return
    from ssrr.bench.shard import bench_shard

    _emit("shard", bench_shard(source, out, repeats=repeats), as_json, write)


@bench_app.command("linear")
def linear(
    dataset: str = typer.Option("shards/cifar10-jpeg", help="Shard folder or name."),
    backbone: str = typer.Option("random:conv4", help="Run folder, checkpoint, or random:<backbone>."),
    epochs: int = typer.Option(100, help="Linear-evaluation epochs (the protocol: 100), both ways."),
    workers: int | None = typer.Option(None, help="The baseline's DataLoader workers (default: tuned for here)."),
    device: str = Device,
    as_json: bool = AsJson,
    write: bool = Record,
) -> None:
    """Our linear evaluation vs plain torch on features cached once (torchvision DataLoader, nn.Linear, Adam).

    Example: ssrr bench linear --dataset shards/cifar10-jpeg --backbone random:resnet32 --json
    """
    from ssrr.bench.linear import bench_linear
    from ssrr.data.formats import resolve_dataset

    result = bench_linear(resolve_dataset(dataset), backbone, epochs=epochs, workers=workers, device=device)
    _emit(f"linear-{backbone.replace(':', '-').replace('/', '_')}", result, as_json, write)


@bench_app.command("summary")
def summary(
    file: Path = typer.Option(Path("docs/benchmarks.md"), help="The recorded results."),
    readme: Path = typer.Option(Path("README.md"), help="Also rewrite the README's table (between its markers)."),
) -> None:
    """Rewrite the headline table (docs/benchmarks.md and the README) from the recorded results.

    Example: ssrr bench summary
    """
    from ssrr.bench.summary import write_summary
    from ssrr.errors import SsrrError

    if not file.is_file():
        raise SsrrError(f"{file}: no recorded benchmarks (run `ssrr bench ...` first)")
    for path in write_summary(file, [file, readme]):
        console.print(f"wrote the summary table in {path}")


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
