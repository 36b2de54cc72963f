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

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ssrr.data.formats import load_manifest
from ssrr.errors import SsrrError
from ssrr.eval.common import (
    base_result,
    check_labels,
    output_dir,
    resolve_execution,
    result_stem,
    write_result,
)
from ssrr.eval.features import (
    class_names,
    eval_image_size,
    extract_features,
    held_out_split,
    parse_image_size,
    split_tag,
)
from ssrr.eval.linear import classification_metrics, confusion_png, new_head, predict
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
    train_split: str = "train",
    test_split: str | None = None,
    num_threads: int | None = None,
    progress: ProgressFn | None = None,
    write: bool = True,
) -> dict[str, Any]:
    """Fine-tune `loaded.module` (in place) with a new head; score on the held-out split; write the result.

    `test_split` None is the dataset's labelled held-out split (the manifest's `eval_split`); both splits are
    checked before any work. `eval_every` > 0 also scores it every that many epochs (recorded in `history`).
    """
    started = time.perf_counter()
    check_labels(labels)
    if epochs < 1 or batch < 2:
        raise SsrrError(f"--epochs must be at least 1 and --batch at least 2, got {epochs} and {batch}")
    if augmentation not in AUGMENTATIONS:
        raise SsrrError(f"--augment must be one of {', '.join(AUGMENTATIONS)}, got {augmentation!r}")
    execution = resolve_execution(device, precision)
    manifest = load_manifest(shard_dir)
    test_split = held_out_split(shard_dir, manifest, labels, test_split, train=train_split)
    names = class_names(manifest, labels)
    size = eval_image_size(
        loaded, manifest, parse_image_size(image_size) if isinstance(image_size, str) else image_size
    )
    run = _Finetuning.build(loaded, manifest, names, seed, execution, (backbone_lr, head_lr, weight_decay))
    loader = _train_loader(shard_dir, augmentation, train_split, batch, seed, size, num_threads, execution)
    member = None
    if subset is not None:
        member = torch.zeros(manifest.splits[train_split].samples, dtype=torch.bool)
        member[subset.long().cpu()] = True
    out_dir = output_dir(loaded, out)
    stem = result_stem(protocol, manifest.name, labels, seed, split_tag(manifest, test_split))
    weights_dir = out_dir / stem
    history: list[dict[str, float]] = []
    metrics: dict[str, Any] = {}

    with loader:  # its DALI pipelines closed when training ends, however it ends
        for epoch in range(epochs):
            loss = run.train_epoch(
                training_batches(loader, epoch, labels, batch, member), f"{shard_dir}: split '{train_split}'", labels
            )
            record: dict[str, float] = {"epoch": epoch + 1, "loss": loss}
            if epoch + 1 == epochs or (eval_every and (epoch + 1) % eval_every == 0):
                metrics = run.score(shard_dir, test_split, labels, names, size, num_threads)
                record["top1"] = metrics["top1"]
            history.append(record)
            if write:
                save_finetuned(weights_dir, run.backbone, run.head, loaded.name, epoch + 1, labels)
            if progress is not None:
                progress(epoch + 1, epochs, record["loss"])
    result = base_result(
        protocol, loaded, manifest.name, labels, seed, execution, split=test_split, tag=split_tag(manifest, test_split)
    )
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
        image_size=list(size) if size else list(manifest.image_size),
        train_samples=int(member.sum()) if member is not None else manifest.splits[train_split].samples,
        test_samples=metrics["test_samples"],
        history=history,
    )
    result["wall_s"] = round(time.perf_counter() - started, 3)
    if not write:
        return result
    png = confusion_png(
        metrics["confusion"],
        names,
        out_dir / f"{stem}-confusion.png",
        f"{protocol} {manifest.name} ({labels}): top-1 {metrics['top1']:.2f}%  [{loaded.source}]",
    )
    result["files"] = [str(png), str(weights_dir / BACKBONE_FILE), str(weights_dir / HEAD_FILE)]
    result["wall_s"] = round(time.perf_counter() - started, 3)
    return write_result(out_dir, stem, result)


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
