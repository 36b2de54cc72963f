"""Representations of a whole split through the DALI evaluation pipeline (normalise only, no augmentation).

The backbone runs in eval mode (BatchNorm uses its running statistics) without gradients; the pipeline
reads every sample exactly once (`training=False`: no shuffle, the last batch padded and its padding rows
marked invalid and dropped here), and the rows come back sorted by sample index, so two extractions of
the same split line up row for row.

Domain-transfer image-size policy: when the evaluation dataset's images differ in size from the images the
backbone was pretrained on (`LoadedBackbone.image_size`, read from the run), they are resized to the
pretraining size, so the backbone sees objects at the scale it learnt them (CIFAR 32x32 into a backbone
pretrained on STL-10 96x96 is upsampled to 96x96). `--image-size native` keeps the dataset's own size;
`--image-size HxW` (or one number) forces a size. A backbone of unknown pretraining size (random weights,
a bare weights file) sees the dataset's own size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ssrr.data.formats import Manifest, load_manifest
from ssrr.errors import SsrrError
from ssrr.precision import Execution, as_execution
from ssrr.train.checkpoint import LoadedBackbone


@dataclass
class Features:
    """One split's representations and labels, row i = sample index[i], sorted by index."""

    z: torch.Tensor  # (N, D) float32
    fine: torch.Tensor  # (N,) int64, -1 where unlabeled
    coarse: torch.Tensor  # (N,) int64, -1 where absent
    index: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.z)

    def labels(self, which: str = "fine") -> torch.Tensor:
        """The fine or coarse labels; a split without them is a clear SsrrError."""
        labels = self.fine if which == "fine" else self.coarse
        if len(labels) and bool((labels < 0).any()):
            raise SsrrError(f"this split has no {which} labels for every sample (use --labels fine?)")
        return labels

    def to(self, device: torch.device | str) -> Features:
        return Features(self.z.to(device), self.fine.to(device), self.coarse.to(device), self.index.to(device))

    def subset(self, rows: torch.Tensor) -> Features:
        rows = rows.to(self.z.device)
        return Features(self.z[rows], self.fine[rows], self.coarse[rows], self.index[rows])


MAX_IMAGE_SIDE = 8192


def parse_image_size(text: str | None) -> str | tuple[int, int]:
    """`auto` (the policy above), `native`, `32` or `96x96`."""
    if text is None or text in ("auto", "native"):
        return text or "auto"
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1 or max(parts) > MAX_IMAGE_SIDE:
        raise SsrrError(f"--image-size must be auto, native, N or HxW (1 to {MAX_IMAGE_SIDE}), got {text!r}")
    return (parts[0], parts[1])


def eval_image_size(
    loaded: LoadedBackbone, manifest: Manifest, policy: str | tuple[int, int] = "auto"
) -> tuple[int, int] | None:
    """The size to resize evaluation images to, or None for the dataset's own size (see module docstring)."""
    if isinstance(policy, tuple):
        return None if tuple(manifest.image_size) == policy else policy
    if policy == "native" or loaded.image_size is None:
        return None
    pretrain = (int(loaded.image_size[0]), int(loaded.image_size[1]))
    return None if tuple(manifest.image_size) == pretrain else pretrain


def num_classes(manifest: Manifest, labels: str) -> int:
    """Classes of the fine or coarse labelling; a dataset without coarse classes is a clear SsrrError."""
    names = class_names(manifest, labels)
    if not names:
        raise SsrrError(f"{manifest.name}: has no {labels} classes (coarse labels exist for CIFAR-100 only)")
    return len(names)


def class_names(manifest: Manifest, labels: str) -> list[str]:
    return list(manifest.classes if labels == "fine" else manifest.coarse_classes)


def fit_split(manifest: Manifest, scored: str) -> str:
    """The split a protocol fits on when none is named (the linear head's data, the k-NN bank, the gallery, the
    fine-tuning data): `train`, joined by the validation split carved from it (`ssrr shard --val`) unless that
    split is the one scored. So a test figure uses every training image, as on the uncarved dataset, and a
    validation figure never fits on the validation images."""
    validation = manifest.validation_split
    return f"train+{validation}" if validation and validation != scored and validation in manifest.splits else "train"


def held_out_split(shard_dir: Path | str, manifest: Manifest, labels: str, split: str | None = None) -> str:
    """The split a protocol scores: `split` (`--split`), else the dataset's labelled held-out split (the
    manifest's `eval_split`: test for CIFAR and STL-10, val for tiny-ImageNet), checked (`check_labelled`)."""
    chosen = split or manifest.held_out_split
    if chosen is None:
        raise SsrrError(
            f"{shard_dir}: no labelled held-out split (has: {', '.join(manifest.splits)}); name one with --split"
        )
    check_labelled(shard_dir, manifest, labels, chosen)
    return chosen


def check_labelled(shard_dir: Path | str, manifest: Manifest, labels: str, split: str) -> None:
    """`split` (each part of a joined one, train+val) exists and carries `labels` labels: checked before any
    feature is computed, so a wrong split is one line at once, not after minutes of extraction."""
    num_classes(manifest, labels)
    for name in manifest.split_parts(shard_dir, split):
        if not manifest.splits[name].labeled:
            default = manifest.held_out_split
            hint = f"; its labelled held-out split is '{default}' (--split {default})" if default else ""
            raise SsrrError(f"{shard_dir}: split '{name}' has no {labels} labels for every sample{hint}")


def split_tag(manifest: Manifest, split: str) -> str:
    """The result-file suffix of a split: empty for the dataset's default held-out split, else the split's
    name (so scoring another split never overwrites the default result)."""
    return "" if split == manifest.held_out_split else split


def evaluation_loader(
    shard_dir: Path | str,
    split: str,
    *,
    device: torch.device,
    batch: int = 256,
    image_size: tuple[int, int] | None = None,
    num_threads: int | None = None,
    dtype: torch.dtype = torch.float32,
):  # type: ignore[no-untyped-def]
    """A ViewLoader that reads `split` once, in order, normalised only (the evaluation recipe)."""
    from ssrr.pipelines import recipes
    from ssrr.pipelines.loader import ViewLoader

    load_manifest(shard_dir).split_parts(shard_dir, split)  # a combined split (train+val) reads its parts as one
    return ViewLoader(
        shard_dir,
        recipes.evaluation(),
        split=split,
        batch_size=batch,
        device=str(device),
        training=False,
        image_size=image_size,
        num_threads=num_threads,
        dtype=dtype,
    )


def valid_batches(loader, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:  # type: ignore[no-untyped-def]
    """(images, fine, coarse, index) of every real sample: padding rows (valid=False) dropped.

    With one view per image (the evaluation recipe) `views` has M rows; with V views only the first is kept.
    """
    for batch in loader.epoch(epoch):
        m = len(batch.valid)
        views = batch.views[:m] if len(batch.views) != m else batch.views
        keep = batch.valid.to(views.device)
        if bool(keep.all()):
            yield views, batch.fine, batch.coarse, batch.index
        else:
            keep_cpu = keep.to(batch.fine.device)
            yield views[keep], batch.fine[keep_cpu], batch.coarse[keep_cpu], batch.index[keep_cpu]


@torch.no_grad()
def embed(backbone: nn.Module, images: torch.Tensor, execution: Execution | None = None) -> torch.Tensor:
    """Representations of a batch, float32, computed under `execution` (float32 on the images' device if None)."""
    return (execution or as_execution(images.device)).forward(backbone, images).flatten(1)


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    shard_dir: Path | str,
    split: str,
    *,
    device: Execution | torch.device | str,
    batch: int = 256,
    image_size: tuple[int, int] | None = None,
    num_threads: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> Features:
    """The representations of every sample of `split`, on `device`, sorted by sample index (`on_batch(rows)`,
    when given, is told each batch's real rows: a progress bar).

    `device` may be an `Execution` (device and precision: the features are float32 whatever the precision),
    else float32 on that device. The backbone is put in eval mode for the extraction and given back in the
    mode it came in (the trainer's k-NN probe calls this mid-training).
    """
    execution = as_execution(device)
    device = execution.device
    loader = evaluation_loader(
        shard_dir,
        split,
        device=device,
        batch=batch,
        image_size=image_size,
        num_threads=num_threads,
        dtype=execution.view_dtype,
    )
    was_training = backbone.training
    backbone.eval()
    zs, fines, coarses, indices = [], [], [], []
    try:
        for images, fine, coarse, index in valid_batches(loader):
            if len(index) == 0:
                continue
            zs.append(embed(backbone, images, execution))
            fines.append(fine.to(device))
            coarses.append(coarse.to(device))
            indices.append(index.to(device))
            if on_batch is not None:
                on_batch(len(index))
    finally:
        backbone.train(was_training)
        loader.close()  # its DALI pipeline stopped here, whether the pass ended, failed or was interrupted
    if not zs:
        raise SsrrError(f"{shard_dir}: split '{split}' is empty")
    index = torch.cat(indices).long()
    order = torch.argsort(index)
    return Features(
        torch.cat(zs)[order].contiguous(),
        torch.cat(fines).long()[order],
        torch.cat(coarses).long()[order],
        index[order],
    )
