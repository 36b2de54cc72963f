"""`ssrr eval ...`: the paper's evaluation protocols on a pretrained (or random) backbone.

Every command takes a run folder, a checkpoint folder, a backbone `.safetensors` file, or `random:<backbone>`
(the lower bound), and a dataset (a name under --shards-root or a shard folder; by default the one the run was
pretrained on). Results go to `<run>/eval/` (for random backbones `runs/random-<backbone>/eval/`), or `--out`.
With `--json` one JSON object is printed on stdout; progress and tables go to stderr.

Length: over 400 lines because it holds the six protocol commands, each a thin call with its own help and
examples; the options they share are declared once at the top.
"""

from __future__ import annotations

import time
from typing import Any

import typer
from ssrr.cli.common import console, new_app

eval_app = new_app(
    "Evaluate a backbone: linear, finetune, semi, retrieval, tsne, knn. Results go to RUN/eval/.\n\n"
    "Example: [bold]ssrr eval linear runs/relational-resnet32-cifar100-s1 --dataset cifar100[/]"
)

SPEC_HELP = "Run folder, checkpoint folder, backbone .safetensors file, or random:<backbone> (e.g. random:conv4)."
DATASET_HELP = "Dataset name under --shards-root, or a shard folder (default: the dataset the run was pretrained on)."
LABELS_HELP = "fine, or coarse (CIFAR-100's 20 superclasses: the 'grain' protocol)."
DEVICE_HELP = "auto (the GPU when usable, else the CPU, saying why), cpu, cuda, cuda:N."
OUT_HELP = "Output folder (default RUN/eval/, or runs/random-<backbone>/eval/ for random:<backbone>)."
IMAGE_SIZE_HELP = "auto (resize to the backbone's pretraining size when it differs), native, N or HxW."
BACKBONE_HELP = "Expected backbone (conv4, resnet32, ...): refuse a checkpoint of another one."
PRECISION_HELP = "Forward passes in fp32, bf16, fp16, or auto (bf16 where native, fp16 on older GPUs, else fp32)."
SPLIT_HELP = (
    "Split scored (default: the dataset's labelled held-out split, from its manifest: test for CIFAR and STL-10, "
    "val for tiny-ImageNet or an image folder without test)."
)
SEED_HELP = "Seed: head initialisation, shuffles, subsets (and the weights of random:<backbone>)."

Spec = typer.Argument(..., metavar="RUN_DIR_OR_CHECKPOINT", help=SPEC_HELP)
Dataset = typer.Option(None, "--dataset", "-d", help=DATASET_HELP)
Labels = typer.Option("fine", help=LABELS_HELP)
Seed = typer.Option(1, help=SEED_HELP)
Device = typer.Option("auto", help=DEVICE_HELP)
Out = typer.Option(None, help=OUT_HELP)
AsJson = typer.Option(False, "--json", help="Print one JSON object (the result) on stdout.")
ShardsRoot = typer.Option("shards", help="Where dataset names are looked up.")
ImageSize = typer.Option("auto", help=IMAGE_SIZE_HELP)
BackboneOpt = typer.Option(None, "--backbone", help=BACKBONE_HELP)
PrecisionOpt = typer.Option("fp32", help=PRECISION_HELP)
Split = typer.Option(None, "--split", help=SPLIT_HELP)


def _load(spec: str, dataset: str | None, shards_root: str, backbone: str | None, seed: int):  # type: ignore[no-untyped-def]
    """Seed, then load the backbone (random weights are drawn from the seed) and resolve the dataset."""
    from ssrr.data.remote import resolve_dataset_any
    from ssrr.errors import SsrrError
    from ssrr.eval.common import seed_everything
    from ssrr.train.checkpoint import load_backbone

    seed_everything(seed)
    loaded = load_backbone(spec, backbone or None)
    name = dataset or loaded.trained_on
    if not name:
        raise SsrrError(f"{spec}: pretraining dataset unknown; name the evaluation dataset with --dataset")
    return loaded, resolve_dataset_any(name, shards_root)


def _emit(result: dict[str, Any], as_json: bool, headline: list[str]) -> None:
    """One JSON object on stdout, or a short table on stderr."""
    from rich.table import Table

    from ssrr.eval.common import dump_json

    if as_json:
        typer.echo(dump_json(result))
        return
    table = Table(title=f"{result['protocol']}: {result['source']} on {result['dataset']} ({result['labels']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in headline:
        value = result.get(key)
        if isinstance(value, dict):
            for sub, v in value.items():
                table.add_row(f"{key} {sub}", f"{v:.2f}" if isinstance(v, float) else str(v))
        elif value is not None:
            table.add_row(key, f"{value:.2f}" if isinstance(value, float) else str(value))
    table.add_row("wall_s", f"{result.get('wall_s', 0):.1f}")
    console.print(table)
    for path in result.get("files", []):
        console.print(f"  wrote {path}")


class _EpochProgress:
    """A transient rich progress bar on stderr, fed (epoch, epochs, loss)."""

    def __init__(self, title: str) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn(title),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,  # a bar only where it can redraw: no stray blank line in logs
        )
        self.task: Any = None

    def __enter__(self) -> _EpochProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)  # type: ignore[arg-type]

    def __call__(self, epoch: int, epochs: int, loss: float) -> None:
        if self.task is None:
            self.task = self.progress.add_task("", total=epochs, loss="-")
        self.progress.update(self.task, completed=epoch, loss=f"{loss:.4f}")


@eval_app.command("linear")
def linear(
    spec: str = Spec,
    dataset: str | None = Dataset,
    split: str | None = Split,
    labels: str = Labels,
    epochs: int = typer.Option(100, help="Epochs of the linear head (the protocol: 100)."),
    batch: int = typer.Option(128, help="Batch size of the linear head (the protocol: 128)."),
    lr: float = typer.Option(1e-3, help="Adam learning rate (the protocol: 1e-3)."),
    seed: int = Seed,
    device: str = Device,
    precision: str = PrecisionOpt,
    out: str | None = Out,
    image_size: str = ImageSize,
    backbone: str | None = BackboneOpt,
    shards_root: str = ShardsRoot,
    as_json: bool = AsJson,
) -> None:
    """Linear evaluation: frozen backbone, Linear(D, classes), Adam 1e-3, batch 128, 100 epochs.

    Features are extracted once and the head trained on them (same result as recomputing them every
    epoch, far faster). Writes linear-DATASET[-coarse]-sSEED.json/.md and a confusion-matrix PNG.

    Examples:

      ssrr eval linear runs/relational-resnet32-cifar100-s1 --dataset cifar100 --seed 1

      ssrr eval linear runs/relational-resnet32-cifar10-s1 --dataset cifar100     # domain transfer 10->100

      ssrr eval linear runs/relational-resnet32-cifar100-s1 --labels coarse       # grain: CIFAR-100-20

      ssrr eval linear random:resnet32 --dataset cifar100 --seed 2 --json        # the lower bound
    """
    from ssrr.eval.linear import linear_eval

    loaded, shard_dir = _load(spec, dataset, shards_root, backbone, seed)
    with _EpochProgress("linear head") as progress:
        result = linear_eval(
            loaded,
            shard_dir,
            labels=labels,
            epochs=epochs,
            batch=batch,
            lr=lr,
            seed=seed,
            device=device,
            precision=precision,
            out=out,
            image_size=image_size,
            test_split=split,
            progress=progress,
        )
    _emit(result, as_json, ["top1", "top5", "extract_s", "train_s"])


@eval_app.command("finetune")
def finetune(
    spec: str = Spec,
    dataset: str | None = Dataset,
    split: str | None = Split,
    labels: str = Labels,
    epochs: int = typer.Option(100, help="Fine-tuning epochs."),
    batch: int = typer.Option(128, help="Batch size."),
    backbone_lr: float = typer.Option(1e-3, help="Adam learning rate of the backbone."),
    head_lr: float = typer.Option(1e-4, help="Adam learning rate of the head."),
    weight_decay: float = typer.Option(1e-5, help="Weight decay (both groups)."),
    eval_every: int = typer.Option(0, help="Also score the held-out split every N epochs (0: at the end only)."),
    augment: str = typer.Option(
        "none", help="Training images: none (normalise only, the authors') or crop-flip (random crop + flip)."
    ),
    seed: int = Seed,
    device: str = Device,
    precision: str = PrecisionOpt,
    out: str | None = Out,
    image_size: str = ImageSize,
    backbone: str | None = BackboneOpt,
    shards_root: str = ShardsRoot,
    as_json: bool = AsJson,
) -> None:
    """Fine-tune backbone and a new head together (normalise only; --augment crop-flip), score the held-out split.

    Writes finetune-DATASET-sSEED.json/.md, a confusion-matrix PNG and the weights (backbone.safetensors,
    head.safetensors) in finetune-DATASET-sSEED/, updated every epoch.

    Example: ssrr eval finetune runs/relational-resnet34-stl10-s1 --dataset stl10 --epochs 100 --eval-every 10
    """
    from ssrr.eval.finetune import finetune as run

    loaded, shard_dir = _load(spec, dataset, shards_root, backbone, seed)
    with _EpochProgress("fine-tune") as progress:
        result = run(
            loaded,
            shard_dir,
            labels=labels,
            epochs=epochs,
            batch=batch,
            backbone_lr=backbone_lr,
            head_lr=head_lr,
            weight_decay=weight_decay,
            eval_every=eval_every,
            augmentation=augment,
            seed=seed,
            device=device,
            precision=precision,
            out=out,
            image_size=image_size,
            test_split=split,
            progress=progress,
        )
    _emit(result, as_json, ["top1", "top5"])


@eval_app.command("semi")
def semi(
    spec: str = Spec,
    dataset: str | None = Dataset,
    split: str | None = Split,
    fractions: str = typer.Option("0.01,0.1,0.25,0.5,1.0", help="Labelled fractions of the train split."),
    mode: str = typer.Option("linear", help="linear (on cached features) or finetune."),
    labels: str = Labels,
    epochs: int = typer.Option(100, help="Epochs per fraction."),
    batch: int = typer.Option(128, help="Batch size."),
    seed: int = Seed,
    device: str = Device,
    precision: str = PrecisionOpt,
    out: str | None = Out,
    image_size: str = ImageSize,
    backbone: str | None = BackboneOpt,
    shards_root: str = ShardsRoot,
    as_json: bool = AsJson,
) -> None:
    """Accuracy versus labels: class-balanced, seeded, nested label subsets (1% inside 10% inside ...).

    Writes semi-DATASET-sSEED.json/.md and an accuracy-versus-labels PNG.

    Example: ssrr eval semi runs/relational-resnet32-cifar10-s1 --fractions 0.01,0.1,0.25,0.5,1.0
    """
    from ssrr.eval.semi import parse_fractions, semi_eval

    parsed = parse_fractions(fractions)
    loaded, shard_dir = _load(spec, dataset, shards_root, backbone, seed)
    result = semi_eval(
        loaded,
        shard_dir,
        fractions=parsed,
        mode=mode,
        labels=labels,
        epochs=epochs,
        batch=batch,
        seed=seed,
        device=device,
        precision=precision,
        out=out,
        image_size=image_size,
        progress=lambda line: console.print(f"  {line}"),
        split=split,
    )
    _emit(result, as_json, ["fractions"])


@eval_app.command("retrieval")
def retrieval(
    spec: str = Spec,
    dataset: str | None = Dataset,
    gallery: str = typer.Option("train", help="Split searched (the query split itself: each query left out)."),
    queries: str | None = typer.Option(None, "--split", "--queries", help="Split of the queries. " + SPLIT_HELP),
    show: int = typer.Option(8, help="Queries drawn in the PNG grid (with their top 10)."),
    max_queries: int = typer.Option(0, help="Score a seeded subset of this many queries (0: all)."),
    labels: str = Labels,
    seed: int = Seed,
    device: str = Device,
    precision: str = PrecisionOpt,
    out: str | None = Out,
    image_size: str = ImageSize,
    backbone: str | None = BackboneOpt,
    shards_root: str = ShardsRoot,
    as_json: bool = AsJson,
) -> None:
    """Image retrieval by cosine similarity: precision@1/5/10, mAP (by class), a top-10 grid PNG.

    Example: ssrr eval retrieval runs/relational-resnet32-cifar10-s1 --dataset cifar10 --show 8
    """
    from ssrr.eval.retrieval import retrieval_eval

    loaded, shard_dir = _load(spec, dataset, shards_root, backbone, seed)
    result = retrieval_eval(
        loaded,
        shard_dir,
        labels=labels,
        query_split=queries,
        gallery_split=gallery,
        show=show,
        max_queries=max_queries,
        seed=seed,
        device=device,
        precision=precision,
        out=out,
        image_size=image_size,
    )
    _emit(result, as_json, ["map", "precision_at"])


@eval_app.command("tsne")
def tsne(
    spec: str = Spec,
    dataset: str | None = Dataset,
    split: str | None = typer.Option(None, "--split", help="Split embedded. " + SPLIT_HELP),
    points: int = typer.Option(2000, help="Seeded subsample of the split (0: all; exact t-SNE is O(N^2))."),
    perplexity: float = typer.Option(30.0, help="t-SNE perplexity."),
    iterations: int = typer.Option(1000, help="Gradient-descent iterations."),
    labels: str = Labels,
    seed: int = Seed,
    device: str = Device,
    precision: str = PrecisionOpt,
    out: str | None = Out,
    image_size: str = ImageSize,
    backbone: str | None = BackboneOpt,
    shards_root: str = ShardsRoot,
    as_json: bool = AsJson,
) -> None:
    """A t-SNE map of test representations coloured by class (PNG).

    Example: ssrr eval tsne runs/relational-resnet32-cifar10-s1 --dataset cifar10 --points 2000
    """
    from ssrr.eval.tsne import tsne_eval

    loaded, shard_dir = _load(spec, dataset, shards_root, backbone, seed)
    started = time.perf_counter()
    with console.status("t-SNE ..."):
        result = tsne_eval(
            loaded,
            shard_dir,
            labels=labels,
            split=split,
            points=points,
            perplexity=perplexity,
            iterations=iterations,
            seed=seed,
            device=device,
            precision=precision,
            out=out,
            image_size=image_size,
        )
    result.setdefault("wall_s", round(time.perf_counter() - started, 3))
    _emit(result, as_json, ["points", "kl", "embed_s"])


@eval_app.command("knn")
def knn(
    spec: str = Spec,
    dataset: str | None = Dataset,
    split: str | None = Split,
    k: int = typer.Option(200, "--k", help="Neighbours voting."),
    temperature: float = typer.Option(0.1, help="Vote weight exp(cosine / temperature)."),
    labels: str = Labels,
    seed: int = Seed,
    device: str = Device,
    precision: str = PrecisionOpt,
    out: str | None = Out,
    image_size: str = ImageSize,
    backbone: str | None = BackboneOpt,
    shards_root: str = ShardsRoot,
    as_json: bool = AsJson,
) -> None:
    """Weighted k-NN accuracy (k=200, temperature 0.1): test split against the train gallery.

    Example: ssrr eval knn runs/relational-resnet32-cifar10-s1 --dataset cifar10 --json
    """
    from ssrr.eval.knn import knn_eval

    loaded, shard_dir = _load(spec, dataset, shards_root, backbone, seed)
    result = knn_eval(
        loaded,
        shard_dir,
        labels=labels,
        k=k,
        temperature=temperature,
        seed=seed,
        device=device,
        precision=precision,
        out=out,
        image_size=image_size,
        split=split,
    )
    _emit(result, as_json, ["top1", "top5"])


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")
