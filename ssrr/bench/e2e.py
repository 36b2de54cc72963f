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

import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ssrr.bench.authors_code import AuthorsCode
from ssrr.bench.baseline import Baseline, Setting, Timing, baseline_parts, best_setting, grid
from ssrr.bench.limits import step_limit
from ssrr.bench.timing import median_step_s, timed_steps
from ssrr.config import RunConfig
from ssrr.data.formats import load_manifest
from ssrr.devices import choose_device
from ssrr.hardware import cores, tune_cpu_allocator
from ssrr.methods import method_class
from ssrr.methods.base import Method
from ssrr.models.backbones import build_backbone
from ssrr.pipelines import recipes
from ssrr.pipelines.loader import Batch, ViewLoader
from ssrr.precision import Execution
from ssrr.precision import resolve as resolve_precision
from ssrr.threads import ThreadPlan
from ssrr.train.threads import PlanChoice, applied, choose_plan, step_function


def bench_execution(device: str, precision: str, *, channels_last: bool = True) -> Execution:
    """The device (`ssrr.devices.choose_device`, the rule of every command) and precision both sides of a
    benchmark run in."""
    dev = choose_device(device)
    if dev.type == "cpu":
        tune_cpu_allocator()
    return resolve_precision(precision, dev, channels_last=channels_last)


def method_step(method: Method, execution: Execution) -> Callable[[Batch], None]:
    """A method's training step as `ssrr pretrain` runs it: forward under the precision, (scaled) backward, Adam."""
    return step_function(method, execution)


def _our_method(backbone: str, k: int, m: int, execution: Execution, compile: bool) -> tuple[RunConfig, Method]:
    config = RunConfig(backbone=backbone, k=k, batch=m, precision=execution.precision, compile=compile)
    return config, execution.prepare(method_class("relational")(config, build_backbone(backbone), 10))


def _our_plan(shard_dir: Path | str, config: RunConfig, method: Method, execution: Execution) -> PlanChoice:
    """The thread plan `ssrr pretrain` would run this workload with on this machine (cached, else timed now)."""
    side = min(load_manifest(Path(shard_dir)).image_size)

    def loader_for(plan: ThreadPlan) -> ViewLoader:
        cpus = plan.pipeline_cpus(os.sched_getaffinity(0))
        return _our_loader(shard_dir, config, execution, plan, cpus)

    timing = execution.device.type == "cpu"
    return choose_plan(config, method, execution, loader_for, view_side=side, timing=timing)


def _our_loader(
    shard_dir: Path | str, config: RunConfig, execution: Execution, plan: ThreadPlan, cpus: set[int] | None
) -> ViewLoader:
    return ViewLoader(
        shard_dir, recipes.relational(config.k), batch_size=config.batch_size, device=execution.device,
        dtype=execution.view_dtype, num_threads=plan.dali_threads, pipeline_cpus=cpus,
    )  # fmt: skip


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
    compile: bool = False,
    authors: bool = True,
    authors_code: Path | str | None = None,
) -> dict[str, Any]:
    """End-to-end views/s of ours (under the thread plan `ssrr pretrain` picks, ssrr.threads) and of the tuned
    public-code baseline (`ssrr.bench.baseline`), the same device, precision, warm-up, steps and repeats on both
    sides; with `authors`, also the public code as its authors run it (float32, NCHW, 2 workers, the better of 1
    and 2 threads): ssrr's transcription, or their own code from the checkout `authors_code`. `baseline_steps`:
    steps of each probe of a baseline's settings (0: none). Ours' parts are timed beside the whole."""
    execution = bench_execution(device, precision)
    dev = execution.device
    theirs = _authors(shard_dir, backbone, k, m, execution, authors and baseline_steps > 0, authors_code)
    config, method = _our_method(backbone, k, m, execution, compile)
    plan = _our_plan(shard_dir, config, method, execution)
    if compile:  # as `ssrr pretrain --compile`: in place, after the plan (it compiles at its first step, under it)
        method.backbone.compile()
    ours = method_step(method, execution)
    timing = Timing(warmup, steps, repeats)
    sides = _baselines(shard_dir, backbone, k, m, execution, baseline_steps, max_workers, max_threads, theirs)
    runs: list[float] = []
    waits: list[float] = []
    cpus = plan.plan.pipeline_cpus(os.sched_getaffinity(0))
    with _our_loader(shard_dir, config, execution, plan.plan, cpus) as loader:  # closed once ours is measured
        for repeat in range(repeats):  # interleaved: drift of a shared machine falls on both sides
            with applied(plan.plan):
                batches = loader.endless(1000 * repeat)
                seconds, wait = timed_steps(batches, ours, warmup, steps)
                batches.close()  # type: ignore[attr-defined]
            runs.append(steps * k * m / seconds)
            waits.append(wait / seconds)
            for side in sides:
                side.runs += side.baseline.views_per_s(side.setting, Timing(warmup, steps, 1), first_seed=repeat)
        views_per_s = statistics.median(runs)
        with applied(plan.plan):
            parts = _our_parts(loader, ours, timing)
            step_limit = _limit(loader, ours, execution, views_per_s / (k * m))
    result: dict[str, Any] = {"baseline_views_per_s": None}
    for side in sides:
        result.update(side.result(timing))
    baseline_rate = result["baseline_views_per_s"]
    authors_rate = result.get("authors_views_per_s")
    return {
        "views_per_s": views_per_s,
        "images_per_s": views_per_s / k,
        "data_wait": statistics.median(waits),
        "ratio": views_per_s / baseline_rate if baseline_rate else None,
        "ratio_to_authors": views_per_s / authors_rate if authors_rate else None,
        **parts,
        "parts_predict": _composition(parts, views_per_s, k * m),
        "thread_plan": plan.record(),
        "compile": compile,
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


@dataclass
class _Side:
    """A baseline timed beside ours: the tuned public code (`baseline_*` keys) or the authors' own settings
    (`authors_*`)."""

    name: str
    baseline: Baseline | AuthorsCode
    setting: Setting
    tried: list[dict[str, Any]]
    runs: list[float] = field(default_factory=list)

    def result(self, timing: Timing) -> dict[str, Any]:
        if self.name == "baseline":
            assert isinstance(self.baseline, Baseline)  # the tuned side is always ssrr's
            parts = baseline_parts(self.baseline, self.setting, timing, self.runs)
            return {**parts, "baseline_settings": {"best": self.setting.record(), "tried": self.tried}}
        code = self.baseline.record() if isinstance(self.baseline, AuthorsCode) else {"code": "transcription"}
        return {
            "authors_views_per_s": statistics.median(self.runs),
            "authors_runs": self.runs,
            "authors_settings": {"best": self.setting.record(), "tried": self.tried, "precision": "fp32", **code},
        }


def _authors(
    shard_dir: Path | str,
    backbone: str,
    k: int,
    m: int,
    execution: Execution,
    authors: bool,
    authors_code: Path | str | None,
) -> Baseline | AuthorsCode | None:
    """The authors' side, float32 as their script (it has no autocast): their own code from a checkout, else
    ssrr's transcription of it; None without `authors`. Built before ours, so that a bad checkout fails first,
    and only when baselines are timed: building it reads the whole train split."""
    if not authors:
        return None
    if authors_code is not None:
        return AuthorsCode(authors_code, shard_dir, backbone, k, m, execution.device.type)
    return Baseline(shard_dir, backbone, k, m, Execution(execution.device))


def _baselines(
    shard_dir: Path | str,
    backbone: str,
    k: int,
    m: int,
    execution: Execution,
    probe_steps: int,
    max_workers: int | None,
    max_threads: int | None,
    theirs: Baseline | AuthorsCode | None,
) -> list[_Side]:
    """The sides timed beside ours, each with its best setting probed briefly now."""
    if not probe_steps:
        return []
    probe = Timing(1, probe_steps, 1)
    shared = theirs.images if isinstance(theirs, Baseline) else None  # the transcription read the split already
    tuned = Baseline(shard_dir, backbone, k, m, execution, images=shared)
    tried, best = best_setting(tuned, probe, grid(max_workers, max_threads))
    sides = [_Side("baseline", tuned, best, tried)]
    if theirs is not None:  # their settings: NCHW, 2 DataLoader workers, the better of 1 and 2 threads
        workers = 2 if max_workers is None else min(2, max_workers)
        own = [Setting(workers, threads, False) for threads in sorted({1, min(2, cores())})]
        tried, best = best_setting(theirs, probe, own)
        sides.append(_Side("authors", theirs, best, tried))
    return sides


def _composition(parts: dict[str, Any], views_per_s: float, views_per_step: int) -> dict[str, float]:
    """What ours' parts predict for the whole: one after the other (serial) or fully overlapped (the slower of
    the two), and how far the whole falls short of the overlapped figure (`overhead`, 0: perfect overlap)."""
    step_rate = views_per_step / parts["step_s"]
    loader = parts["loader_views_per_s"]
    overlapped = min(loader, step_rate)
    return {
        "serial_views_per_s": 1 / (1 / loader + 1 / step_rate),
        "overlapped_views_per_s": overlapped,
        "overhead": 1 - views_per_s / overlapped,
    }


def _our_parts(loader: ViewLoader, step: Callable[[Batch], None], timing: Timing) -> dict[str, Any]:
    """Ours' parts: the step alone on a batch in memory (median seconds) and the loader alone (views/s)."""
    batches = loader.endless(500_000)
    batch = next(batches)
    step_s = median_step_s(step, batch, timing.warmup, timing.steps)
    seconds = timed_steps(batches, lambda _: None, timing.warmup, timing.steps)[0]
    batches.close()  # type: ignore[attr-defined]
    views = batch.views.shape[0]
    return {"step_s": step_s, "loader_views_per_s": timing.steps * views / seconds}


def _limit(
    loader: ViewLoader, step: Callable[[Batch], None], execution: Execution, steps_per_s: float
) -> dict[str, Any]:
    batches = loader.endless(999_999)
    batch = next(batches)
    batches.close()  # type: ignore[attr-defined]
    return step_limit(lambda: step(batch), execution, steps_per_s)
