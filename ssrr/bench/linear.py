"""Benchmark: linear evaluation on cached features (ours) vs recomputing features every epoch (public code).

Ours: extract train and test representations once through the DALI evaluation pipeline, then train the
linear head for `epochs` epochs on the in-memory tensor. Baseline: the public code's way, every epoch reads
the train split again (shuffled, normalise only), pushes every batch through the frozen backbone, and takes
one Adam step on the head; the test split is scored once at the end. Running the baseline for 100 epochs
would take long, so `baseline_epochs` epochs are measured and the per-epoch time extrapolated to `epochs`
(`baseline_extrapolated: true` in the result).

Accuracy check: both ways are trained for `baseline_epochs` epochs with the same seed and compared
(they differ only in the order the shuffles visit the samples); the full `epochs` result of ours is
reported as `top1`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ssrr.data.formats import load_manifest
from ssrr.eval.common import resolve_device, seed_everything
from ssrr.eval.features import class_names, eval_image_size, extract_features
from ssrr.eval.linear import BATCH, LR, classification_metrics, fit_and_score, new_head, predict
from ssrr.precision import as_execution
from ssrr.train.checkpoint import load_backbone


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def recompute_baseline(
    backbone: torch.nn.Module,
    shard_dir: Path | str,
    classes: int,
    *,
    epochs: int,
    device: torch.device,
    image_size: tuple[int, int] | None,
    seed: int,
    batch: int = BATCH,
    lr: float = LR,
) -> tuple[torch.nn.Linear, float]:
    """Train the head the public code's way for `epochs` epochs; return it and the seconds spent."""
    from ssrr.pipelines import recipes
    from ssrr.pipelines.loader import ViewLoader

    dim = int(getattr(backbone, "feature_dim", 0)) or 0
    loader = ViewLoader(
        shard_dir,
        recipes.evaluation(),
        split="train",
        batch_size=batch,
        device=str(device),
        seed=seed,
        training=True,
        image_size=image_size,
    )
    backbone.eval()
    head: torch.nn.Linear | None = new_head(dim, classes, seed).to(device) if dim else None
    optimiser = torch.optim.Adam(head.parameters(), lr=lr) if head is not None else None
    _sync(device)
    started = time.perf_counter()
    with loader:  # its DALI pipelines closed when the head is trained, however that ends
        for epoch in range(epochs):
            for b in loader.epoch(epoch):
                keep = b.valid.bool()
                with torch.no_grad():
                    z = as_execution(device).forward(backbone, b.views[: len(keep)][keep.to(b.views.device)])
                if head is None:  # a backbone without feature_dim: size the head from the first batch
                    head = new_head(z.shape[1], classes, seed).to(device)
                    optimiser = torch.optim.Adam(head.parameters(), lr=lr)
                loss = F.cross_entropy(head(z), b.fine[keep.to(b.fine.device)].long().to(device))
                optimiser.zero_grad(set_to_none=True)  # type: ignore[union-attr]
                loss.backward()
                optimiser.step()  # type: ignore[union-attr]
    _sync(device)
    assert head is not None
    return head, time.perf_counter() - started


def bench_linear(
    shard_dir: Path | str,
    backbone_spec: str,
    epochs: int = 100,
    baseline_epochs: int = 2,
    *,
    device: str = "auto",
    seed: int = 1,
) -> dict[str, Any]:
    """Wall time of the cached-feature linear evaluation vs the recompute-every-epoch baseline (extrapolated)."""
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
    short, _ = fit_and_score(train, test, "fine", names, epochs=baseline_epochs, seed=seed, device=dev)

    head, measured_s = recompute_baseline(
        backbone, shard_dir, len(names), epochs=baseline_epochs, device=dev, image_size=size, seed=seed
    )
    score_started = time.perf_counter()
    test_again = extract_features(backbone, shard_dir, "test", device=dev, image_size=size)
    baseline_metrics = classification_metrics(predict(head, test_again.z), test_again.labels("fine"), names)
    score_s = time.perf_counter() - score_started
    per_epoch = measured_s / baseline_epochs
    baseline_wall_s = per_epoch * epochs + score_s
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
        "baseline_wall_s": round(baseline_wall_s, 3),
        "baseline_epoch_s": round(per_epoch, 3),
        "baseline_epochs": baseline_epochs,
        "baseline_measured_s": round(measured_s, 3),
        "baseline_extrapolated": baseline_epochs < epochs,  # measured for fewer epochs than ours ran
        "speedup": round(baseline_wall_s / wall_s, 2) if wall_s > 0 else None,
        "accuracy_check_epochs": baseline_epochs,
        "top1_cached_at_check": short["top1"],
        "top1_recomputed_at_check": baseline_metrics["top1"],
        "accuracy_check_diff": round(abs(short["top1"] - baseline_metrics["top1"]), 4),
    }
