"""Semi-supervised evaluation: accuracy versus the fraction of training labels available.

Label subsets are class-balanced, seeded and NESTED across fractions: the train split's samples of each
class are put in one seeded random order, and the subset for a fraction f takes the first
round(f * N / classes) of every class (at least one; fraction 1.0 takes every sample). The 1% subset is
therefore inside the 10% subset, which is inside the 25% one, and so on: a larger fraction only adds labels.

Mode `linear` (default) trains the linear protocol on the cached features of each subset (features
extracted once); mode `finetune` fine-tunes a fresh copy of the pretrained backbone on each subset.
Writes `semi-<dataset>[-coarse]-s<seed>.json` (or `semi-finetune-...`), its summary, and a PNG of
test accuracy versus labelled fraction.
"""

from __future__ import annotations

import copy
import tarfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from ssrr.data.formats import LABELS_EXT, decode_labels, load_manifest
from ssrr.errors import SsrrError
from ssrr.eval.common import new_figure, save_figure
from ssrr.eval.linear import BATCH, EPOCHS, extract_pair, fit_and_score
from ssrr.eval.protocols import EvalContext, Option, Protocol, register
from ssrr.train.checkpoint import LoadedBackbone

FRACTIONS = (0.01, 0.1, 0.25, 0.5, 1.0)
FIGURE_SIZE_IN = (7.0, 5.0)  # 700 x 500 pixels


def parse_fractions(text: str | Sequence[float]) -> list[float]:
    """`0.01,0.1,1.0` -> sorted unique fractions in (0, 1]."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()] if isinstance(text, str) else [float(v) for v in text]
    except ValueError as exc:
        raise SsrrError(f"--fractions must be numbers in (0, 1] separated by commas, got {text!r}") from exc
    if not values or any(not 0.0 < v <= 1.0 for v in values):
        raise SsrrError(f"--fractions must be numbers in (0, 1] separated by commas, got {text!r}")
    return sorted(set(values))


def nested_subsets(labels: torch.Tensor, fractions: Sequence[float], seed: int) -> dict[float, torch.Tensor]:
    """Row positions (sorted) of a class-balanced, seeded, nested subset of `labels` for each fraction."""
    labels = labels.cpu().long()
    classes = labels.unique()
    g = torch.Generator().manual_seed(seed)
    order = {
        int(c): (rows := (labels == c).nonzero().flatten())[torch.randperm(len(rows), generator=g)] for c in classes
    }
    per_class_base = len(labels) / max(len(classes), 1)
    subsets = {}
    for f in fractions:
        if f >= 1.0:
            subsets[f] = torch.arange(len(labels))
            continue
        take = max(1, round(f * per_class_base))
        subsets[f] = torch.cat([rows[:take] for rows in order.values()]).sort().values
    return subsets


def split_labels(shard_dir: Path | str, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(fine, coarse, index) of every sample of a split (or a joined one, `train+val`), read from the `.lbl`
    members only, sorted by index."""
    manifest = load_manifest(shard_dir)
    rows = []
    for shard in manifest.shard_paths(Path(shard_dir), split):
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.name.endswith(f".{LABELS_EXT}"):
                    handle = tar.extractfile(member)
                    if handle is not None:
                        rows.append(decode_labels(handle.read()))
    table = torch.tensor(rows, dtype=torch.long).reshape(-1, 3)
    table = table[table[:, 2].argsort()]
    return table[:, 0], table[:, 1], table[:, 2]


def semi_png(fractions: list[float], top1: list[float], path: Path, title: str) -> Path:
    """Test top-1 versus the labelled fraction (log axis), 700 x 500 pixels."""
    fig = new_figure(*FIGURE_SIZE_IN)
    ax = fig.add_subplot()
    percent = [100.0 * f for f in fractions]
    ax.plot(percent, top1, marker="o", color="tab:red")
    for x, y in zip(percent, top1, strict=True):
        ax.annotate(f"{y:.1f}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    if len(percent) > 1 and min(percent) > 0:
        ax.set_xscale("log")
    ax.set_xticks(percent, [f"{p:g}%" for p in percent])
    ax.set_xlabel("labelled training samples")
    ax.set_ylabel("test top-1 (%)")
    ax.grid(True, alpha=0.3)
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def semi_eval(
    loaded: LoadedBackbone,
    shard_dir: Path | str,
    *,
    fractions: Sequence[float] | str = FRACTIONS,
    mode: str = "linear",
    labels: str = "fine",
    epochs: int = EPOCHS,
    seed: int = 1,
    device: str | torch.device = "auto",
    precision: str = "fp32",
    out: str | Path | None = None,
    image_size: str | tuple[int, int] = "auto",
    batch: int = BATCH,
    feature_batch: int = 256,
    progress: Callable[[str], None] | None = None,
    split: str | None = None,
) -> dict[str, Any]:
    """Accuracy at each labelled fraction (linear on cached features, or fine-tuning), written as one result.

    Scored on `split`, by default the dataset's labelled held-out split (checked before any work)."""
    if mode not in ("linear", "finetune"):
        raise SsrrError(f"--mode must be linear or finetune, got {mode!r}")
    chosen = parse_fractions(fractions)
    ctx = EvalContext.open(
        loaded, shard_dir, labels=labels, seed=seed, device=device, precision=precision, split=split,
        image_size=image_size, out=out,
    )  # fmt: skip
    protocol = "semi" if mode == "linear" else "semi-finetune"
    stem = ctx.stem(protocol)
    fit = _linear_fractions if mode == "linear" else _finetune_fractions
    per_fraction = {}
    for f, scores in fit(ctx, chosen, epochs, batch, feature_batch, ctx.out_dir / f"{stem}-weights"):
        per_fraction[f"{f:g}"] = scores
        if progress:
            progress(f"{100 * f:g}% labels: top-1 {scores['top1']:.2f}%")
    largest = per_fraction[f"{chosen[-1]:g}"]
    result = ctx.result(protocol)
    result.update(
        mode=mode,
        fractions={k: v["top1"] for k, v in per_fraction.items()},
        fractions_top5={k: v["top5"] for k, v in per_fraction.items()},
        samples={k: v["samples"] for k, v in per_fraction.items()},
        top1=largest["top1"],
        top5=largest["top5"],
        epochs=epochs,
        batch=batch,
    )
    title = f"{mode} accuracy vs labels: {ctx.manifest.name} ({labels})  [{loaded.source}]"
    top1 = [per_fraction[f"{f:g}"]["top1"] for f in chosen]
    return ctx.finish(stem, result, [semi_png(chosen, top1, ctx.out_dir / f"{stem}.png", title)])


Scores = Iterator[tuple[float, dict[str, Any]]]


def _linear_fractions(
    ctx: EvalContext, fractions: list[float], epochs: int, batch: int, feature_batch: int, _weights: Path
) -> Scores:
    """The linear protocol on the cached features of each nested subset of the train split."""
    train, test, _, _ = extract_pair(
        ctx.loaded, ctx.shard_dir, device=ctx.execution, image_size=ctx.image_size, train_split=ctx.train_split,
        split=ctx.split, feature_batch=feature_batch,
    )  # fmt: skip
    subsets = nested_subsets(train.labels(ctx.labels), fractions, ctx.seed)
    for f in fractions:
        metrics, _ = fit_and_score(
            train.subset(subsets[f]), test, ctx.labels, ctx.names, epochs=epochs, batch=batch, seed=ctx.seed,
            device=ctx.device,
        )  # fmt: skip
        yield f, {"top1": metrics["top1"], "top5": metrics["top5"], "samples": len(subsets[f])}


def _finetune_fractions(
    ctx: EvalContext, fractions: list[float], epochs: int, batch: int, _feature_batch: int, weights: Path
) -> Scores:
    """A fresh copy of the pretrained backbone fine-tuned on each nested subset of the train split."""
    from ssrr.eval.finetune import finetune

    fine, coarse, index = split_labels(ctx.shard_dir, ctx.train_split)
    subsets = nested_subsets(fine if ctx.labels == "fine" else coarse, fractions, ctx.seed)
    for f in fractions:
        result = finetune(
            copy.deepcopy(ctx.loaded),
            ctx.shard_dir,
            labels=ctx.labels,
            epochs=epochs,
            seed=ctx.seed,
            device=ctx.device,
            precision=ctx.execution.requested,
            out=weights,
            image_size=ctx.image_size,
            batch=batch,
            subset=index[subsets[f]],
            protocol=f"finetune-f{f:g}",
            train_split=ctx.train_split,
            split=ctx.split,
        )
        yield f, {"top1": result["top1"], "top5": result["top5"], "samples": len(subsets[f])}


register(
    Protocol(
        "semi",
        semi_eval,
        """Accuracy versus labels: class-balanced, seeded, nested label subsets (1% inside 10% inside ...).

    Writes semi-DATASET-SOURCE-sSEED.json/.md and an accuracy-versus-labels PNG.

    Example: ssrr eval semi runs/relational-resnet32-cifar10-s1 --fractions 0.01,0.1,0.25,0.5,1.0
    """,
        options=(
            Option("fractions", str, ",".join(f"{f:g}" for f in FRACTIONS), "Labelled fractions of the train split."),
            Option("mode", str, "linear", "linear (on cached features) or finetune."),
            Option("epochs", int, EPOCHS, "Epochs per fraction."),
            Option("batch", int, BATCH, "Batch size."),
        ),
        headline=("fractions",),
        progress="lines",
    )
)
