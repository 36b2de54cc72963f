"""Views per second of the DALI loader and of the torchvision reference loader, side by side.

Both are driven from this process, on the same shards with the same recipe (relational, K views, batch M). Repeats
alternate the two (DALI, reference, DALI, reference, ...) so that load from other processes falls on both
alike. Each repeat starts a fresh iterator (a new DALI pipeline for a new epoch; a new DataLoader with its
worker processes), discards warm-up steps (pipeline build, shuffle-buffer fill, worker start-up), then times
``steps`` steps of pure loading (nothing consumes the batches). The figures are medians over repeats.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from ssrr.errors import SsrrError
from ssrr.hardware import default_workers


def _children_cpu_seconds() -> float:
    """CPU seconds (user + system) used so far by this process's live child processes (Linux /proc)."""
    me = os.getpid()
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:  # fields after "pid (comm)": state, ppid, ..., utime (12th), stime (13th)
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _time_steps(iterator, warmup: int, steps: int, sync) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and its children) for ``steps`` batches after ``warmup``."""
    for _ in range(warmup):
        next(iterator)
    sync()
    cpu = time.process_time() + _children_cpu_seconds()
    start = time.perf_counter()
    for _ in range(steps):
        batch = next(iterator)
    sync()
    elapsed = time.perf_counter() - start
    cpu = time.process_time() + _children_cpu_seconds() - cpu
    del batch
    return elapsed, cpu


def _cycle_epochs(loader, first_epoch: int):
    epoch = first_epoch
    while True:
        yield from loader.epoch(epoch)
        epoch += 1


def bench_pipeline(
    shard_dir: Path | str,
    k: int = 32,
    batch: int = 64,
    device: str = "cpu",
    repeats: int = 5,
    steps: int | None = None,
    workers: int | None = None,
    *,
    split: str = "train",
    baseline: bool = True,
    baseline_steps: int | None = None,
    num_threads: int | None = None,
    steps_per_run: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> dict:
    """Views/s of the DALI `ViewLoader` and of the torchvision references, alternating, medians over `repeats`.

    `steps`: timed DALI steps per repeat (default 8 pipeline runs, at least 32; whole runs only); `workers`:
    DataLoader workers of the references (default min(8, cores)); `baseline_steps`: timed reference steps per
    repeat (default 6); `baseline=False` times DALI only. The references are the public code's torchvision
    transforms on PIL images (`pil`) and the recipe in transforms.v2 on uint8 tensors (`tv2`), K per image in
    DataLoader workers; their colour operations differ from DALI's (fixed order, hue as a YIQ rotation, one
    clamp; see docs/fidelity.md). Keys: views_per_s, baseline_views_per_s (the faster reference), baseline (its
    name), baselines, ratio (against the faster), ratios, cpu_us_per_view and baseline_cpu_us_per_view (CPU
    time of the process and its children per view: less sensitive to other load than wall time), cpu_ratio,
    the settings, the runs, and load_average (the machine's 1-minute load before and after)."""
    from ssrr.pipelines.loader import ViewLoader
    from ssrr.pipelines.recipes import relational
    from ssrr.pipelines.reference import BACKENDS, ReferenceViews

    if repeats < 1:
        raise SsrrError(f"repeats must be at least 1, got {repeats}")
    recipe = relational(k)
    loader = ViewLoader(
        shard_dir,
        recipe,
        split=split,
        batch_size=batch,
        device=device,
        num_threads=num_threads,
        steps_per_run=steps_per_run,
        dtype=dtype,
    )
    per_run = loader.steps_per_run
    if steps is None:
        steps = max(32, 8 * per_run)
    steps = max(per_run, (steps // per_run) * per_run)  # whole pipeline runs only
    workers = default_workers() if workers is None else workers
    references = {name: ReferenceViews(shard_dir, split, recipe, backend=name) for name in BACKENDS} if baseline else {}
    ref_steps = _reference_steps(references, batch, baseline_steps or 6, max(2, workers), shard_dir, split)
    sync = torch.cuda.synchronize if loader.device.type == "cuda" else (lambda: None)
    views_per_step = k * batch
    load_before = os.getloadavg()[0]
    with loader:  # its DALI pipelines closed when the timing ends, however that ends
        runs = _alternate(loader, references, repeats, steps, ref_steps, views_per_step, sync, workers, recipe, split)
    return {
        **_rates(runs, list(references)),
        "k": k,
        "batch": batch,
        "device": str(loader.device),
        "repeats": repeats,
        "steps": steps,
        "baseline_steps": ref_steps if baseline else None,
        "workers": workers,
        "num_threads": loader.num_threads,
        "steps_per_run": per_run,
        "cpus": len(os.sched_getaffinity(0)),
        "samples": loader.shares[0],
        "image_size": list(loader.image_size),
        "shard_dir": str(shard_dir),
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # 1-minute, before and after
    }


def _rates(runs: dict[str, list[tuple[float, float]]], references: list[str]) -> dict[str, Any]:
    """The medians of the (views/s, CPU us per view) runs of DALI and of each reference, and their ratios
    against the fastest reference."""
    medians = {name: statistics.median(rate for rate, _ in pairs) for name, pairs in runs.items()}
    cpu_us = {name: statistics.median(us for _, us in pairs) for name, pairs in runs.items()}
    fastest = max(references, key=lambda name: medians[name]) if references else None
    views_per_s = medians["dali"]
    baseline_views_per_s = medians[fastest] if fastest else None
    baseline_cpu_us = cpu_us[fastest] if fastest else None
    return {
        "views_per_s": views_per_s,
        "baseline_views_per_s": baseline_views_per_s,
        "baseline": fastest,
        "baselines": {name: medians[name] for name in references},
        "ratio": views_per_s / baseline_views_per_s if baseline_views_per_s else None,
        "ratios": {name: views_per_s / medians[name] for name in references},
        "cpu_us_per_view": cpu_us["dali"],
        "baseline_cpu_us_per_view": baseline_cpu_us,
        "cpu_ratio": baseline_cpu_us / cpu_us["dali"] if baseline_cpu_us else None,
        "dali_runs": [rate for rate, _ in runs["dali"]],
        "baseline_runs": {name: [rate for rate, _ in runs[name]] for name in references},
    }


def _alternate(
    loader: Any,
    references: dict[str, Any],
    repeats: int,
    steps: int,
    ref_steps: int,
    views_per_step: int,
    sync: Any,
    workers: int,
    recipe: Any,
    split: str,
) -> dict[str, list[tuple[float, float]]]:
    """(views/s, CPU us per view) of each repeat of DALI and of each reference, timed in turn so load changes
    on a shared machine hit all alike."""
    from ssrr.pipelines.reference import reference_loader

    per_run = loader.steps_per_run
    runs: dict[str, list[tuple[float, float]]] = {"dali": [], **{name: [] for name in references}}
    for repeat in range(repeats):
        iterator = _cycle_epochs(loader, first_epoch=repeat * 1000)
        try:
            seconds, cpu = _time_steps(iterator, 3 * per_run, steps, sync)  # warm-up past the prefetched runs
        finally:
            iterator.close()
        runs["dali"].append((steps * views_per_step / seconds, cpu / (steps * views_per_step) * 1e6))
        for name, dataset in references.items():
            ref = reference_loader(
                dataset.shard_dir,
                recipe,
                split=split,
                batch_size=loader.batch_size,
                workers=workers,
                seed=repeat,
                dataset=dataset,
            )
            try:
                seconds, cpu = _time_steps(ref, max(2, workers), ref_steps, lambda: None)
            finally:
                ref.close()
            runs[name].append((ref_steps * views_per_step / seconds, cpu / (ref_steps * views_per_step) * 1e6))
    return runs


def _reference_steps(
    references: dict[str, Any], batch: int, wanted: int, warmup: int, shard_dir: Path | str, split: str
) -> int:
    """Timed reference steps per repeat: `wanted`, or fewer when the split is too small for them and the warm-up."""
    if not references:
        return wanted
    samples = len(next(iter(references.values())))
    if samples >= batch * (wanted + warmup):
        return wanted
    steps = samples // batch - warmup
    if steps < 1:
        raise SsrrError(f"{shard_dir} ({split}): too few samples for a baseline of batch {batch}")
    return steps
