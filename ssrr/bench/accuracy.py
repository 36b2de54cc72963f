"""Time to an accuracy: the same relational pretraining done our way and the public code's way, each backbone then
scored by the paper's linear evaluation.

Ours: `ssrr pretrain` itself (DALI views, fused relation head, checkpoints and logs included in its time). Baseline,
in the same process after ours: the torchvision reference loader (K transforms per image in DataLoader workers)
feeding the public implementation's step (NCHW, literal pair loop), for the same epochs, K, M, loss, optimiser,
device and precision. Both backbones get the same linear protocol (seed 1). The comparable figures are the
pretraining wall times (`speedup`) at the accuracies each reached.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ssrr.bench.baseline import baseline_step
from ssrr.bench.e2e import bench_execution
from ssrr.eval.linear import linear_eval
from ssrr.pipelines import recipes
from ssrr.pipelines.reference import ReferenceViews, reference_loader
from ssrr.precision import Execution
from ssrr.train.checkpoint import LoadedBackbone, load_backbone
from ssrr.train.config import RunConfig
from ssrr.train.loop import RunResult, pretrain


def _ours(
    shard_dir: Path, backbone: str, k: int, m: int, epochs: int, seed: int, linear_epochs: int, execution: Execution
) -> tuple[float, float, RunResult]:
    with tempfile.TemporaryDirectory(prefix="ssrr-bench-accuracy-") as runs:
        config = RunConfig(
            dataset=str(shard_dir),
            backbone=backbone,
            k=k,
            batch=m,
            epochs=epochs,
            seed=seed,
            out=runs,
            name="ours",
            precision=execution.precision,
            device=execution.device.type,
        )
        started = time.perf_counter()
        run = pretrain(config, show=False)
        seconds = time.perf_counter() - started
        top1 = linear_eval(
            load_backbone(run.run_dir), shard_dir, epochs=linear_epochs, device=execution.device, write=False
        )["top1"]
    return seconds, top1, run


def _baseline(
    shard_dir: Path,
    backbone: str,
    k: int,
    m: int,
    epochs: int,
    seed: int,
    linear_epochs: int,
    workers: int,
    execution: Execution,
) -> tuple[float, float]:
    torch.manual_seed(seed)
    step, net = baseline_step(backbone, k, execution)
    recipe = recipes.relational(k)
    images = ReferenceViews(shard_dir, "train", recipe)
    started = time.perf_counter()
    net.train()
    for epoch in range(epochs):
        for batch in reference_loader(
            shard_dir, recipe, batch_size=m, workers=workers, seed=seed * 1000 + epoch, dataset=images
        ):
            step(batch)
    seconds = time.perf_counter() - started
    loaded = LoadedBackbone(net.eval(), backbone, "baseline (public-code structure)", None, None)
    return seconds, linear_eval(loaded, shard_dir, epochs=linear_epochs, device=execution.device, write=False)["top1"]


def bench_time_to_accuracy(
    shard_dir: Path | str,
    *,
    backbone: str = "conv4",
    k: int = 4,
    m: int = 64,
    epochs: int = 2,
    seed: int = 1,
    linear_epochs: int = 100,
    workers: int = 2,
    repeats: int = 3,
    precision: str = "fp32",
    device: str = "auto",
) -> dict[str, Any]:
    """Each repeat runs ours then the baseline (alternating, so load changes hit both), on the same device and in
    the same precision; medians over repeats."""
    shard_dir = Path(shard_dir)
    execution = bench_execution(device, precision, channels_last=False)
    ours_runs, base_runs = [], []
    for _ in range(repeats):
        seconds, top1, run = _ours(shard_dir, backbone, k, m, epochs, seed, linear_epochs, execution)
        ours_runs.append((seconds, top1))
        base_runs.append(_baseline(shard_dir, backbone, k, m, epochs, seed, linear_epochs, workers, execution))
    ours_s = statistics.median(s for s, _ in ours_runs)
    baseline_s = statistics.median(s for s, _ in base_runs)
    return {
        "pretrain_s": ours_s,
        "top1": statistics.median(t for _, t in ours_runs),
        "baseline_pretrain_s": baseline_s,
        "baseline_top1": statistics.median(t for _, t in base_runs),
        "speedup": baseline_s / ours_s,
        "runs": [{"pretrain_s": s, "top1": t} for s, t in ours_runs],
        "baseline_runs": [{"pretrain_s": s, "top1": t} for s, t in base_runs],
        "dataset": str(shard_dir),
        "backbone": backbone,
        "k": k,
        "m": m,
        "epochs": epochs,
        "linear_epochs": linear_epochs,
        "repeats": repeats,
        **execution.record(),
        "device": str(execution.device),
        "steps": run.steps,
        "views_per_s": run.throughput.get("views_per_s"),
    }
