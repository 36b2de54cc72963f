"""End-to-end pretraining throughput: data pipeline + model step, against the public code's way.

Ours: the DALI `ViewLoader` feeding the relational method (channels_last, the vectorised relation stage,
bf16 autocast where the device runs it natively), Adam. Baseline, in the same process and run: the torchvision
reference loader (K transforms per image in 2 DataLoader workers) feeding a float32 step with the literal
pair loop (the public implementation's structure). Warm-up steps are excluded; figures are medians over repeats.
The share of time ours spends waiting for data is reported (`data_wait`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ssrr.bench.literal import literal_relation_logits
from ssrr.hardware import native_bf16, tune_cpu_allocator
from ssrr.losses import focal_loss
from ssrr.methods import method_class
from ssrr.models.backbones import build_backbone
from ssrr.models.heads import RelationHead
from ssrr.pipelines import recipes
from ssrr.pipelines.loader import Batch, ViewLoader
from ssrr.pipelines.reference import ReferenceViews, reference_loader
from ssrr.train.config import RunConfig


def endless_batches(loader: ViewLoader, first_epoch: int) -> Iterator[Batch]:
    epoch = first_epoch
    while True:
        yield from loader.epoch(epoch)
        epoch += 1


def timed_steps(
    batches: Iterator[Batch], step: Callable[[Batch], None], warmup: int, steps: int
) -> tuple[float, float]:
    """(seconds for `steps` steps after `warmup`, seconds of those spent waiting for the next batch)."""
    for _ in range(warmup):
        step(next(batches))
    wait = 0.0
    start = time.perf_counter()
    for _ in range(steps):
        tick = time.perf_counter()
        batch = next(batches)
        wait += time.perf_counter() - tick
        step(batch)
    return time.perf_counter() - start, wait


def _our_step(backbone: str, k: int, m: int, amp: bool, device: torch.device) -> Callable[[Batch], None]:
    config = RunConfig(backbone=backbone, k=k, batch=m, amp=amp)
    method = method_class("relational")(config, build_backbone(backbone), 10).to(device)
    method = method.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = method.build_optimizer()

    def step(batch: Batch) -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = method(batch).loss
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return step


def baseline_step(backbone: str, k: int) -> tuple[Callable[[Batch], None], nn.Module]:
    """The public implementation's training step (float32, NCHW, literal pair loop, focal loss, Adam 1e-3) and
    the backbone it trains."""
    net = build_backbone(backbone)
    head = RelationHead(net.feature_dim, "cat", fused=False)
    optimizer = torch.optim.Adam([*net.parameters(), *head.parameters()], lr=1e-3)

    def step(batch: Batch) -> None:
        optimizer.zero_grad(set_to_none=True)
        logits, targets = literal_relation_logits(net(batch.views.contiguous()), head, k, "cat")
        focal_loss(logits, targets).backward()
        optimizer.step()

    return step, net


def bench_e2e(
    shard_dir: Path | str,
    *,
    backbone: str = "conv4",
    k: int = 32,
    m: int = 64,
    amp: bool = True,
    steps: int = 20,
    repeats: int = 3,
    baseline_steps: int = 5,
    device: str = "auto",
    warmup: int = 4,
) -> dict[str, Any]:
    dev = torch.device("cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    if dev.type == "cpu":
        tune_cpu_allocator()
    use_amp = amp and native_bf16(dev)
    loader = ViewLoader(
        shard_dir, recipes.relational(k), batch_size=m, device=dev, dtype=torch.bfloat16 if use_amp else torch.float32
    )
    ours = _our_step(backbone, k, m, use_amp, dev)
    runs: list[float] = []
    waits: list[float] = []
    baseline_runs: list[float] = []
    reference = ReferenceViews(shard_dir, "train", recipes.relational(k)) if baseline_steps else None
    base = baseline_step(backbone, k)[0] if baseline_steps else None
    for repeat in range(repeats):
        batches = endless_batches(loader, first_epoch=1000 * repeat)
        seconds, wait = timed_steps(batches, ours, warmup, steps)
        batches.close()  # type: ignore[attr-defined]
        runs.append(steps * k * m / seconds)
        waits.append(wait / seconds)
        if reference is not None and base is not None and repeat == 0:  # the baseline is slow: one repeat
            ref = reference_loader(
                shard_dir, recipes.relational(k), batch_size=m, workers=2, seed=repeat, dataset=reference
            )
            seconds, _ = timed_steps(ref, base, 1, baseline_steps)
            ref.close()  # type: ignore[attr-defined]
            baseline_runs.append(baseline_steps * k * m / seconds)
    views_per_s = statistics.median(runs)
    baseline = statistics.median(baseline_runs) if baseline_runs else None
    return {
        "views_per_s": views_per_s,
        "images_per_s": views_per_s / k,
        "data_wait": statistics.median(waits),
        "baseline_views_per_s": baseline,
        "ratio": views_per_s / baseline if baseline else None,
        "backbone": backbone,
        "k": k,
        "m": m,
        "amp": use_amp,
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "steps": steps,
        "repeats": repeats,
        "baseline_steps": baseline_steps,
        "runs": runs,
        "peak_gpu_memory_mb": torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None,
    }
