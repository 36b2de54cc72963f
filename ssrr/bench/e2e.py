"""End-to-end pretraining throughput: data pipeline + model step, against the public code's way.

Ours: the DALI `ViewLoader` feeding the relational method (channels_last, the vectorised relation stage,
in the benchmark's precision: `auto` is bf16 where the device runs it natively), Adam. Baseline, in the same
process and run, on the same device and in the same precision: the torchvision reference loader (K transforms
per image in DataLoader workers) feeding a step with the literal pair loop (the public implementation's
structure), its workers, threads and memory format tuned (`ssrr.bench.baseline`). The same warm-up, steps and
repeats on both sides, the repeats interleaved (ours, the baseline, ours, ...) so that a machine's drift falls on
both; figures are medians over repeats. The share of time ours spends waiting for data is reported
(`data_wait`), and the step's FLOPs against the device's measured GEMM peak (`step_limit`).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ssrr.bench.baseline import Baseline, Setting, Timing, baseline_parts, best_setting, grid
from ssrr.bench.limits import step_limit
from ssrr.bench.timing import endless_batches, timed_steps
from ssrr.config import RunConfig
from ssrr.devices import choose_device
from ssrr.hardware import tune_cpu_allocator
from ssrr.methods import method_class
from ssrr.methods.base import Method
from ssrr.models.backbones import build_backbone
from ssrr.pipelines import recipes
from ssrr.pipelines.loader import Batch, ViewLoader
from ssrr.precision import Execution, optimizer_step
from ssrr.precision import resolve as resolve_precision


def bench_execution(device: str, precision: str, *, channels_last: bool = True) -> Execution:
    """The device (`ssrr.devices.choose_device`, the rule of every command) and precision both sides of a
    benchmark run in."""
    dev = choose_device(device)
    if dev.type == "cpu":
        tune_cpu_allocator()
    return resolve_precision(precision, dev, channels_last=channels_last)


def method_step(method: Method, execution: Execution) -> Callable[[Batch], None]:
    """A method's training step as `ssrr pretrain` runs it: forward under the precision, (scaled) backward, Adam."""
    optimizer = method.build_optimizer()
    scaler = execution.grad_scaler()

    def step(batch: Batch) -> None:
        optimizer.zero_grad(set_to_none=True)
        with execution.autocast():
            loss = method(batch).loss
        optimizer_step(loss, optimizer, scaler)
        if execution.device.type == "cuda":
            torch.cuda.synchronize(execution.device)

    return step


def _our_step(backbone: str, k: int, m: int, execution: Execution) -> Callable[[Batch], None]:
    config = RunConfig(backbone=backbone, k=k, batch=m, precision=execution.precision)
    method = execution.prepare(method_class("relational")(config, build_backbone(backbone), 10))
    return method_step(method, execution)


def bench_e2e(
    shard_dir: Path | str,
    *,
    backbone: str = "conv4",
    k: int = 32,
    m: int = 64,
    precision: str = "auto",
    steps: int = 20,
    repeats: int = 3,
    baseline_steps: int = 5,
    device: str = "auto",
    warmup: int = 4,
    max_workers: int | None = None,
    max_threads: int | None = None,
) -> dict[str, Any]:
    """End-to-end views/s of ours and of the tuned public-code baseline (see `ssrr.bench.baseline`), the same
    device, precision, warm-up, steps and repeats on both sides. `baseline_steps`: steps of each probe of the
    baseline's settings grid (0: no baseline)."""
    execution = bench_execution(device, precision)
    dev = execution.device
    loader = ViewLoader(shard_dir, recipes.relational(k), batch_size=m, device=dev, dtype=execution.view_dtype)
    ours = _our_step(backbone, k, m, execution)
    timing = Timing(warmup, steps, repeats)
    baseline: Baseline | None = None
    setting: Setting | None = None
    tried: list[dict[str, Any]] = []
    if baseline_steps:
        baseline = Baseline(shard_dir, backbone, k, m, execution)
        tried, setting = best_setting(baseline, Timing(1, baseline_steps, 1), grid(max_workers, max_threads))
    runs: list[float] = []
    waits: list[float] = []
    baseline_runs: list[float] = []
    with loader:  # closed (its DALI pipelines stopped) once ours is measured
        for repeat in range(repeats):  # interleaved: drift of a shared machine falls on both sides
            batches = endless_batches(loader, first_epoch=1000 * repeat)
            seconds, wait = timed_steps(batches, ours, warmup, steps)
            batches.close()  # type: ignore[attr-defined]
            runs.append(steps * k * m / seconds)
            waits.append(wait / seconds)
            if baseline is not None and setting is not None:
                baseline_runs += baseline.views_per_s(setting, Timing(warmup, steps, 1), first_seed=repeat)
        views_per_s = statistics.median(runs)
        step_limit = _limit(loader, ours, execution, views_per_s / (k * m))
    result: dict[str, Any] = {"baseline_views_per_s": None}
    if baseline is not None and setting is not None:
        result = {
            **baseline_parts(baseline, setting, timing, baseline_runs),
            "baseline_settings": {"best": setting.record(), "tried": tried},
        }
    baseline_rate = result["baseline_views_per_s"]
    return {
        "views_per_s": views_per_s,
        "images_per_s": views_per_s / k,
        "data_wait": statistics.median(waits),
        "ratio": views_per_s / baseline_rate if baseline_rate else None,
        **result,
        "step_limit": step_limit,
        "backbone": backbone,
        "k": k,
        "m": m,
        "amp": execution.precision != "fp32",
        **execution.record(),
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "warmup": warmup,
        "steps": steps,
        "repeats": repeats,
        "runs": runs,
        "peak_gpu_memory_mb": torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None,
    }


def _limit(
    loader: ViewLoader, step: Callable[[Batch], None], execution: Execution, steps_per_s: float
) -> dict[str, Any]:
    batches = endless_batches(loader, first_epoch=999_999)
    batch = next(batches)
    batches.close()  # type: ignore[attr-defined]
    return step_limit(lambda: step(batch), execution, steps_per_s)
