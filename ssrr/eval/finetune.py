"""Fine-tuning: the pretrained backbone and a new linear head trained together on labelled data (STL-10).

Settings (the paper's): Adam with two parameter groups, backbone lr 1e-3 and head lr 1e-4, weight decay
1e-5, cross-entropy; the training images go through the DALI pipeline shuffled and seeded, normalised only
as in the authors' code (their fine-tuning reuses the linear-evaluation transform; `augmentation="crop-flip"`
adds random crop + horizontal flip, recipe `crop_flip`); the held-out split is scored through the evaluation
pipeline (normalise only, backbone in eval mode) every `eval_every` epochs and always at the end. After every
epoch the output folder `<out>/<stem>/` holds `backbone.safetensors` (loadable with `load_backbone`, like a
pretraining run's) and `head.safetensors`, both written atomically.

Semi-supervised fine-tuning passes `subset` (sample indices of the train split): every epoch reads the split
through the pipeline and keeps only those samples, re-batched to full batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ssrr.errors import SsrrError
from ssrr.eval.features import eval_image_size, extract_features
from ssrr.eval.linear import classification_metrics, confusion_png, new_head, predict
from ssrr.eval.protocols import EvalContext, Option, Protocol, register
from ssrr.files import save_safetensors
from ssrr.precision import Execution, optimizer_step
from ssrr.train.checkpoint import BACKBONE_FILE, LoadedBackbone

EPOCHS = 100
BATCH = 128
BACKBONE_LR = 1e-3
HEAD_LR = 1e-4
WEIGHT_DECAY = 1e-5
HEAD_FILE = "head.safetensors"
# Training-image recipes of fine-tuning: "none" (normalise only) is the authors'.
AUGMENTATIONS = ("none", "crop-flip")

ProgressFn = Callable[[int, int, float], None]


def _save(module: nn.Module, path: Path, metadata: dict[str, str]) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    save_safetensors(tensors, path, metadata)  # atomic, byte-reproducible


def save_finetuned(folder: Path, backbone: nn.Module, head: nn.Module, name: str, epoch: int, labels: str) -> None:
    """`backbone.safetensors` (metadata backbone=name, loadable by load_backbone) and `head.safetensors`."""
    folder.mkdir(parents=True, exist_ok=True)
    metadata = {"backbone": name, "epoch": str(epoch), "labels": labels, "protocol": "finetune"}
    _save(backbone, folder / BACKBONE_FILE, metadata)
    _save(head, folder / HEAD_FILE, {**metadata, "classes": str(head.out_features)})  # type: ignore[union-attr]


def training_batches(
    loader: Any, epoch: int, labels: str, batch: int, member: torch.Tensor | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images, labels) of one epoch; with `member` (a bool table over sample indices) only those samples,
    gathered into full batches of `batch` (a last remainder of at least 2 is kept)."""
    images_buf: list[torch.Tensor] = []
    labels_buf: list[torch.Tensor] = []
    held = 0
    for b in loader.epoch(epoch):
        m = len(b.index)
        views = len(b.views) // m
        y = (b.fine if labels == "fine" else b.coarse).long()
        keep = b.valid.bool().cpu()
        if member is not None:
            keep = keep & member[b.index.long().cpu()]
        if member is None and bool(keep.all()):
            yield b.views, y.to(b.views.device).repeat(views)
            continue
        rows = keep.nonzero().flatten()
        if len(rows) == 0:
            continue
        # views are view-major: row v * M + m is view v of image m
        all_rows = (torch.arange(views)[:, None] * m + rows[None, :]).flatten().to(b.views.device)
        images_buf.append(b.views.index_select(0, all_rows))
        labels_buf.append(y.cpu()[rows].repeat(views))
        held += len(all_rows)
        while held >= batch:
            images, ys = torch.cat(images_buf), torch.cat(labels_buf)
            yield images[:batch], ys[:batch].to(images.device)
            images_buf, labels_buf, held = [images[batch:]], [ys[batch:]], held - batch
    if held >= 2:
        images, ys = torch.cat(images_buf), torch.cat(labels_buf)
        yield images, ys.to(images.device)


def finetune(
    loaded: LoadedBackbone,
    shard_dir: Path | str,
    *,
    labels: str = "fine",
    epochs: int = EPOCHS,
    seed: int = 1,
    device: str | torch.device = "auto",
    precision: str = "fp32",
    out: str | Path | None = None,
    image_size: str | tuple[int, int] = "auto",
    batch: int = BATCH,
    backbone_lr: float = BACKBONE_LR,
    head_lr: float = HEAD_LR,
    weight_decay: float = WEIGHT_DECAY,
    eval_every: int = 0,
    augmentation: str = "none",
    subset: torch.Tensor | None = None,
    protocol: str = "finetune",
    train_split: str | None = None,
    split: str | None = None,
    num_threads: int | None = None,
    progress: ProgressFn | None = None,
    write: bool = True,
) -> dict[str, Any]:
    """Fine-tune `loaded.module` (in place) with a new head; score on the held-out split; write the result.

    `split` None is the dataset's labelled held-out split (the manifest's `eval_split`); both splits are
    checked before any work. `eval_every` > 0 also scores it every that many epochs (recorded in `history`).
    """
    if epochs < 1 or batch < 2:
        raise SsrrError(f"--epochs must be at least 1 and --batch at least 2, got {epochs} and {batch}")
    if augmentation not in AUGMENTATIONS:
        raise SsrrError(f"--augment must be one of {', '.join(AUGMENTATIONS)}, got {augmentation!r}")
    ctx = EvalContext.open(
        loaded, shard_dir, labels=labels, seed=seed, device=device, precision=precision, split=split,
        image_size=image_size, out=out, fit=train_split,
    )  # fmt: skip
    train_split = ctx.train_split
    size = eval_image_size(loaded, ctx.manifest, ctx.image_size)
    member = None
    if subset is not None:
        member = torch.zeros(ctx.manifest.samples_in(train_split), dtype=torch.bool)
        member[subset.long().cpu()] = True
    stem = ctx.stem(protocol)
    weights_dir = ctx.out_dir / stem if write else None
    plan = _Plan(train_split, batch, epochs, eval_every, augmentation, size, num_threads, member)
    rates = (backbone_lr, head_lr, weight_decay)
    metrics, history = _train(ctx, plan, rates, weights_dir, progress)
    result = ctx.result(protocol)
    result.update(
        top1=metrics["top1"],
        top5=metrics["top5"],
        per_class=metrics["per_class"],
        epochs=epochs,
        batch=batch,
        backbone_lr=backbone_lr,
        head_lr=head_lr,
        weight_decay=weight_decay,
        augmentation=augmentation,
        image_size=list(size) if size else list(ctx.manifest.image_size),
        train_samples=int(member.sum()) if member is not None else ctx.manifest.samples_in(train_split),
        test_samples=metrics["test_samples"],
        history=history,
        wall_s=ctx.wall(),
    )
    if weights_dir is None:
        return result
    title = f"{protocol} {ctx.manifest.name} ({labels}): top-1 {metrics['top1']:.2f}%  [{loaded.source}]"
    png = confusion_png(metrics["confusion"], ctx.names, ctx.out_dir / f"{stem}-confusion.png", title)
    return ctx.finish(stem, result, [png, weights_dir / BACKBONE_FILE, weights_dir / HEAD_FILE])


@dataclass(frozen=True)
class _Plan:
    """How one fine-tuning trains: the split and samples read, batches, epochs, scoring, images."""

    train_split: str
    batch: int
    epochs: int
    eval_every: int
    augmentation: str
    size: tuple[int, int] | None
    num_threads: int | None
    member: torch.Tensor | None  # (samples,) bool: the train samples kept (semi-supervised), None: all


def _train(
    ctx: EvalContext,
    plan: _Plan,
    rates: tuple[float, float, float],
    weights_dir: Path | None,
    progress: ProgressFn | None,
) -> tuple[dict[str, Any], list[dict[str, float]]]:
    """Train backbone and head for `plan.epochs`, scoring `ctx.split` when asked and at the end, the weights
    saved after every epoch in `weights_dir` (when given); the last scores and the per-epoch history."""
    run = _Finetuning.build(ctx.loaded, ctx.manifest, ctx.names, ctx.seed, ctx.execution, rates)
    loader = _train_loader(
        ctx.shard_dir, plan.augmentation, plan.train_split, plan.batch, ctx.seed, plan.size, plan.num_threads,
        ctx.execution,
    )  # fmt: skip
    history: list[dict[str, float]] = []
    metrics: dict[str, Any] = {}
    origin = f"{ctx.shard_dir}: split '{plan.train_split}'"
    with loader:  # its DALI pipelines closed when training ends, however it ends
        for epoch in range(plan.epochs):
            batches = training_batches(loader, epoch, ctx.labels, plan.batch, plan.member)
            record: dict[str, float] = {"epoch": epoch + 1, "loss": run.train_epoch(batches, origin, ctx.labels)}
            if epoch + 1 == plan.epochs or (plan.eval_every and (epoch + 1) % plan.eval_every == 0):
                metrics = run.score(ctx.shard_dir, ctx.split, ctx.labels, ctx.names, plan.size, plan.num_threads)
                record["top1"] = metrics["top1"]
            history.append(record)
            if weights_dir is not None:
                save_finetuned(weights_dir, run.backbone, run.head, ctx.loaded.name, epoch + 1, ctx.labels)
            if progress is not None:
                progress(epoch + 1, plan.epochs, record["loss"])
    return metrics, history


register(
    Protocol(
        "finetune",
        finetune,
        """Fine-tune backbone and a new head together (normalise only; --augment crop-flip), score the held-out split.

    Writes finetune-DATASET-SOURCE-sSEED.json/.md, a confusion-matrix PNG and the weights (backbone.safetensors,
    head.safetensors) in finetune-DATASET-SOURCE-sSEED/, updated every epoch.

    Example: ssrr eval finetune runs/relational-resnet34-stl10-s1 --dataset stl10 --epochs 100 --eval-every 10
    """,
        options=(
            Option("epochs", int, EPOCHS, "Fine-tuning epochs."),
            Option("batch", int, BATCH, "Batch size."),
            Option("backbone_lr", float, BACKBONE_LR, "Adam learning rate of the backbone."),
            Option("head_lr", float, HEAD_LR, "Adam learning rate of the head."),
            Option("weight_decay", float, WEIGHT_DECAY, "Weight decay (both groups)."),
            Option("eval_every", int, 0, "Also score the held-out split every N epochs (0: at the end only)."),
            Option(
                "augmentation",
                str,
                "none",
                "Training images: none (normalise only, the authors') or crop-flip (random crop + flip).",
                flags=("--augment",),
            ),
        ),
        progress="epochs",
    )
)


def _train_loader(
    shard_dir: Path | str,
    augmentation: str,
    split: str,
    batch: int,
    seed: int,
    size: tuple[int, int] | None,
    num_threads: int | None,
    execution: Execution,
):  # type: ignore[no-untyped-def]
    """The fine-tuning loader: normalise only (the authors' way) or crop+flip, shuffled per epoch."""
    from ssrr.pipelines import recipes
    from ssrr.pipelines.loader import ViewLoader

    return ViewLoader(
        shard_dir,
        recipes.crop_flip() if augmentation == "crop-flip" else recipes.evaluation(),
        split=split,
        batch_size=batch,
        device=str(execution.device),
        seed=seed,
        training=True,
        image_size=size,
        num_threads=num_threads,
        dtype=execution.view_dtype,
    )


@dataclass
class _Finetuning:
    """The backbone and its new head, trained together under one precision."""

    backbone: nn.Module
    head: nn.Module
    optimiser: torch.optim.Optimizer
    execution: Execution
    scaler: torch.amp.GradScaler | None

    @classmethod
    def build(
        cls,
        loaded: LoadedBackbone,
        manifest: Any,
        names: list[str],
        seed: int,
        execution: Execution,
        rates: tuple[float, float, float],
    ) -> _Finetuning:
        """`rates`: backbone learning rate, head learning rate, weight decay."""
        device = execution.device
        backbone = loaded.module.to(device)
        dim = int(getattr(backbone, "feature_dim", 0)) or _probe_dim(backbone, manifest.image_size, device)
        head = new_head(dim, len(names), seed).to(device)
        optimiser = torch.optim.Adam(
            [{"params": backbone.parameters(), "lr": rates[0]}, {"params": head.parameters(), "lr": rates[1]}],
            weight_decay=rates[2],
        )
        return cls(backbone, head, optimiser, execution, execution.grad_scaler())

    def train_epoch(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], origin: str, labels: str) -> float:
        """One pass over the batches; the mean loss. `origin` names the split in the error for unlabeled samples."""
        self.backbone.train()
        self.head.train()
        model = nn.Sequential(self.backbone, self.head)
        total, seen = torch.zeros((), device=self.execution.device), 0
        for images, y in batches:
            if int(y.min()) < 0:
                raise SsrrError(f"{origin} has unlabeled samples ({labels} labels)")
            total += _train_step(self.execution, model, self.optimiser, self.scaler, images, y) * len(y)
            seen += len(y)
        return float(total) / max(seen, 1)

    def score(
        self,
        shard_dir: Path | str,
        split: str,
        labels: str,
        names: list[str],
        size: tuple[int, int] | None,
        num_threads: int | None,
    ) -> dict[str, Any]:
        """Top-1/top-5 and per-class accuracy of backbone + head on `split` (the head's mode is restored)."""
        test = extract_features(
            self.backbone, shard_dir, split, device=self.execution, image_size=size, num_threads=num_threads
        )
        was = self.head.training
        self.head.eval()
        scored = classification_metrics(predict(self.head, test.z), test.labels(labels), names)
        self.head.train(was)
        return scored


def _train_step(
    execution: Execution,
    model: nn.Module,
    optimiser: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    images: torch.Tensor,
    y: torch.Tensor,
) -> torch.Tensor:
    """One fine-tuning step under the protocol's precision (loss scaling when fp16); returns the loss."""
    with execution.autocast():
        logits = model(execution.inputs(images)).float()
    loss = F.cross_entropy(logits, y.to(execution.device))
    optimiser.zero_grad(set_to_none=True)
    optimizer_step(loss, optimiser, scaler)
    return loss.detach()


@torch.no_grad()
def _probe_dim(backbone: nn.Module, image_size: tuple[int, int], device: torch.device) -> int:
    was = backbone.training
    backbone.eval()
    dim = int(backbone(torch.zeros(1, 3, *image_size, device=device)).flatten(1).shape[1])
    backbone.train(was)
    return dim
