"""Benchmark: the linear protocol our way against the way a competent user writes it in plain torch.

Ours: train and test representations extracted once through the DALI evaluation pipeline, then the linear head
trained for `epochs` epochs on the in-memory tensor with the closed-form step (`ssrr.eval.linear.train_linear`).
Baseline: features also extracted once (the frozen backbone never changes, so nobody recomputes them), through a
torchvision DataLoader (ToTensor + Normalize, workers as tuned for the machine), then `nn.Linear` trained with
cross-entropy, autograd and `torch.optim.Adam` over the same epochs, batches and shuffles
(`ssrr.eval.linear.train_linear_autograd`). Both report their top-1; the ratio is what our extraction and our
step save against that, and it may be below 1 (the summary row then says ours does not beat it).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from ssrr.data.formats import load_manifest
from ssrr.eval.common import resolve_device, seed_everything
from ssrr.eval.features import class_names, eval_image_size, extract_features
from ssrr.eval.linear import classification_metrics, fit_and_score, predict, train_linear_autograd
from ssrr.hardware import default_workers
from ssrr.pipelines import recipes
from ssrr.pipelines.reference import ReferenceViews
from ssrr.precision import as_execution
from ssrr.train.checkpoint import load_backbone


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def reference_features(
    backbone: torch.nn.Module,
    shard_dir: Path | str,
    split: str,
    *,
    device: torch.device,
    image_size: tuple[int, int] | None,
    workers: int,
    batch: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, fine labels) of every sample of `split` through a torchvision DataLoader, in stored order."""
    data = ReferenceViews(shard_dir, split, recipes.evaluation(), image_size=image_size)
    loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=False, num_workers=workers)
    backbone.eval()
    zs, labels = [], []
    for views, label in loader:
        zs.append(as_execution(device).forward(backbone, views[:, 0].to(device)).float())
        labels.append(label[:, 0])
    return torch.cat(zs), torch.cat(labels)


def cached_baseline(
    backbone: torch.nn.Module,
    shard_dir: Path | str,
    names: list[str],
    *,
    epochs: int,
    device: torch.device,
    image_size: tuple[int, int] | None,
    seed: int,
    workers: int,
) -> dict[str, Any]:
    """The plain-torch linear protocol: features cached once, nn.Linear + torch.optim.Adam. Times and top-1."""
    _sync(device)
    started = time.perf_counter()
    train_z, train_y = reference_features(
        backbone, shard_dir, "train", device=device, image_size=image_size, workers=workers
    )
    test_z, test_y = reference_features(
        backbone, shard_dir, "test", device=device, image_size=image_size, workers=workers
    )
    _sync(device)
    extract_s = time.perf_counter() - started
    fit = train_linear_autograd(train_z, train_y, len(names), epochs=epochs, seed=seed, device=device)
    metrics = classification_metrics(predict(fit.head, test_z), test_y.to(device), names)
    _sync(device)
    return {
        "baseline_wall_s": round(time.perf_counter() - started, 3),
        "baseline_extract_s": round(extract_s, 3),
        "baseline_top1": metrics["top1"],
        "baseline_workers": workers,
    }


def bench_linear(
    shard_dir: Path | str,
    backbone_spec: str,
    epochs: int = 100,
    *,
    device: str = "auto",
    seed: int = 1,
    workers: int | None = None,
) -> dict[str, Any]:
    """Wall time and top-1 of our linear evaluation and of the plain-torch cached-feature one (`workers`:
    the baseline's DataLoader workers, default the machine's tuned number)."""
    workers = default_workers() if workers is None else workers
    dev = resolve_device(device)
    seed_everything(seed)
    loaded = load_backbone(backbone_spec)
    manifest = load_manifest(shard_dir)
    names = class_names(manifest, "fine")
    size = eval_image_size(loaded, manifest)
    backbone = loaded.module.to(dev)

    _sync(dev)
    started = time.perf_counter()
    train = extract_features(backbone, shard_dir, "train", device=dev, image_size=size)
    test = extract_features(backbone, shard_dir, "test", device=dev, image_size=size)
    _sync(dev)
    extract_s = time.perf_counter() - started
    metrics, _ = fit_and_score(train, test, "fine", names, epochs=epochs, seed=seed, device=dev)
    wall_s = time.perf_counter() - started
    baseline = cached_baseline(
        backbone, shard_dir, names, epochs=epochs, device=dev, image_size=size, seed=seed, workers=workers
    )
    return {
        "dataset": manifest.name,
        "backbone": loaded.name,
        "source": loaded.source,
        "device": str(dev),
        "train_samples": len(train),
        "test_samples": len(test),
        "epochs": epochs,
        "wall_s": round(wall_s, 3),
        "extract_s": round(extract_s, 3),
        "head_train_s": metrics["train_s"],
        "top1": metrics["top1"],
        "top5": metrics["top5"],
        **baseline,
        "baseline": "features cached once (torchvision DataLoader), nn.Linear + torch.optim.Adam",
        "speedup": round(baseline["baseline_wall_s"] / wall_s, 2) if wall_s > 0 else None,
        "accuracy_check_diff": round(abs(metrics["top1"] - baseline["baseline_top1"]), 4),
    }
