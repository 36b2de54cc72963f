"""Fine-tuning: the pretrained backbone and a new linear head trained together on labelled data (STL-10).

Settings (the paper's): Adam with two parameter groups, backbone lr 1e-3 and head lr 1e-4, weight decay
1e-5, cross-entropy; random-crop + horizontal-flip augmentation through the DALI pipeline (recipe
`crop_flip`, shuffled, seeded); the test split is scored through the evaluation pipeline (normalise only,
backbone in eval mode) every `eval_every` epochs and always at the end. After every epoch the output folder
`<out>/<stem>/` holds `backbone.safetensors` (loadable with `load_backbone`, like a pretraining run's) and
`head.safetensors`, both written atomically.

Semi-supervised fine-tuning passes `subset` (sample indices of the train split): every epoch reads the split
through the pipeline and keeps only those samples, re-batched to full batches.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
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
from ssrr.eval.features import class_names, eval_image_size, extract_features, parse_image_size
from ssrr.eval.linear import classification_metrics, confusion_png, new_head, predict
from ssrr.files import save_safetensors
from ssrr.precision import Execution
from ssrr.train.checkpoint import BACKBONE_FILE, LoadedBackbone

EPOCHS = 100
BATCH = 128
BACKBONE_LR = 1e-3
HEAD_LR = 1e-4
WEIGHT_DECAY = 1e-5
HEAD_FILE = "head.safetensors"

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
    subset: torch.Tensor | None = None,
    protocol: str = "finetune",
    train_split: str = "train",
    test_split: str = "test",
    num_threads: int | None = None,
    progress: ProgressFn | None = None,
    write: bool = True,
) -> dict[str, Any]:
    """Fine-tune `loaded.module` (in place) with a new head; score on the test split; write the result.

    `eval_every` > 0 also scores the test split every that many epochs (recorded in `history`).
    """
    from ssrr.pipelines import recipes
    from ssrr.pipelines.loader import ViewLoader

    started = time.perf_counter()
    check_labels(labels)
    if epochs < 1 or batch < 2:
        raise SsrrError(f"--epochs must be at least 1 and --batch at least 2, got {epochs} and {batch}")
    execution = resolve_execution(device, precision)
    device = execution.device
    manifest = load_manifest(shard_dir)
    names = class_names(manifest, labels)
    if not names:
        raise SsrrError(f"{manifest.name}: has no {labels} classes")
    size = eval_image_size(
        loaded, manifest, parse_image_size(image_size) if isinstance(image_size, str) else image_size
    )
    backbone = loaded.module.to(device)
    dim = int(getattr(backbone, "feature_dim", 0)) or _probe_dim(backbone, manifest.image_size, device)
    head = new_head(dim, len(names), seed).to(device)
    optimiser = torch.optim.Adam(
        [{"params": backbone.parameters(), "lr": backbone_lr}, {"params": head.parameters(), "lr": head_lr}],
        weight_decay=weight_decay,
    )
    loader = ViewLoader(
        shard_dir,
        recipes.crop_flip(),
        split=train_split,
        batch_size=batch,
        device=str(device),
        seed=seed,
        training=True,
        image_size=size,
        num_threads=num_threads,
        dtype=execution.view_dtype,
    )
    scaler = execution.grad_scaler()
    member = None
    if subset is not None:
        member = torch.zeros(manifest.splits[train_split].samples, dtype=torch.bool)
        member[subset.long().cpu()] = True
    out_dir = output_dir(loaded, out)
    stem = result_stem(protocol, manifest.name, labels, seed)
    weights_dir = out_dir / stem
    history: list[dict[str, float]] = []
    metrics: dict[str, Any] = {}

    def score() -> dict[str, Any]:
        test = extract_features(
            backbone, shard_dir, test_split, device=execution, image_size=size, num_threads=num_threads
        )
        was = head.training
        head.eval()
        scored = classification_metrics(predict(head, test.z), test.labels(labels), names)
        head.train(was)
        return scored

    for epoch in range(epochs):
        backbone.train()
        head.train()
        total, seen = torch.zeros((), device=device), 0
        for images, y in training_batches(loader, epoch, labels, batch, member):
            if int(y.min()) < 0:
                raise SsrrError(f"{shard_dir}: split '{train_split}' has unlabeled samples ({labels} labels)")
            loss = _train_step(execution, nn.Sequential(backbone, head), optimiser, scaler, images, y)
            total += loss * len(y)
            seen += len(y)
        record: dict[str, float] = {"epoch": epoch + 1, "loss": float(total) / max(seen, 1)}
        last = epoch + 1 == epochs
        if last or (eval_every and (epoch + 1) % eval_every == 0):
            metrics = score()
            record["top1"] = metrics["top1"]
        history.append(record)
        if write:
            save_finetuned(weights_dir, backbone, head, loaded.name, epoch + 1, labels)
        if progress is not None:
            progress(epoch + 1, epochs, record["loss"])
    result = base_result(protocol, loaded, manifest.name, labels, seed, execution)
    result.update(
        top1=metrics["top1"],
        top5=metrics["top5"],
        per_class=metrics["per_class"],
        epochs=epochs,
        batch=batch,
        backbone_lr=backbone_lr,
        head_lr=head_lr,
        weight_decay=weight_decay,
        augmentation="crop_flip",
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
    if scaler is None:
        loss.backward()
        optimiser.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimiser)
        scaler.update()
    return loss.detach()


@torch.no_grad()
def _probe_dim(backbone: nn.Module, image_size: tuple[int, int], device: torch.device) -> int:
    was = backbone.training
    backbone.eval()
    dim = int(backbone(torch.zeros(1, 3, *image_size, device=device)).flatten(1).shape[1])
    backbone.train(was)
    return dim
