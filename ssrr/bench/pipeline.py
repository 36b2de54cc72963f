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

import torch

from ssrr.errors import SsrrError


def _time_steps(iterator, warmup: int, steps: int, sync) -> float:
    """Seconds for ``steps`` batches after ``warmup`` batches of an iterator."""
    for _ in range(warmup):
        next(iterator)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        batch = next(iterator)
    sync()
    elapsed = time.perf_counter() - start
    del batch
    return elapsed


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
    workers: int = 2,
    *,
    split: str = "train",
    baseline: bool = True,
    baseline_steps: int | None = None,
    num_threads: int | None = None,
    steps_per_run: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> dict:
    """Measure views/s of :class:`~ssrr.pipelines.loader.ViewLoader` and of the torchvision reference.

    Args:
        shard_dir: an ssrr shard folder.
        k, batch: views per image (K) and images per step (M); a step is K*M views.
        device: where the DALI loader runs ("cpu" or "cuda"); the reference always runs on the CPU.
        repeats: timed repeats of each loader (alternating); medians are reported.
        steps: timed DALI steps per repeat (default: 8 pipeline runs, at least 32 steps; whole runs only).
        workers: DataLoader workers of the reference (the public code's setting is 2 on this machine).
        baseline: also time the reference (False: DALI only, ``baseline_views_per_s`` is None).
        baseline_steps: timed reference steps per repeat (default 6; each takes about 5x longer than DALI's).

    Returns:
        {"views_per_s", "baseline_views_per_s", "ratio", "k", "batch", "device", "repeats", "steps",
        "baseline_steps", "workers", "dali_runs" (views/s of each repeat), "baseline_runs", "num_threads",
        "steps_per_run", "cpus", "samples", "image_size", "shard_dir", "load_average" (the machine's 1-minute
        load before and after: load from other processes lowers both figures; here it lowered the reference more)}.
    """
    from ssrr.pipelines.loader import ViewLoader
    from ssrr.pipelines.recipes import relational
    from ssrr.pipelines.reference import ReferenceViews, reference_loader

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
    warmup = 3 * per_run  # past the prefetched runs: the timed ones are computed while timed
    ref_steps = baseline_steps or 6
    ref_warmup = max(2, workers)
    dataset = ReferenceViews(shard_dir, split, recipe) if baseline else None
    if dataset is not None and len(dataset) < batch * (ref_steps + ref_warmup):
        ref_steps = max(1, len(dataset) // batch - ref_warmup)
        if ref_steps < 1:
            raise SsrrError(f"{shard_dir} ({split}): too few samples for a baseline of batch {batch}")
    sync = torch.cuda.synchronize if loader.device.type == "cuda" else (lambda: None)
    views_per_step = k * batch
    load_before = os.getloadavg()[0]
    dali_runs: list[float] = []
    ref_runs: list[float] = []
    for repeat in range(repeats):
        iterator = _cycle_epochs(loader, first_epoch=repeat * 1000)
        try:
            seconds = _time_steps(iterator, warmup, steps, sync)
        finally:
            iterator.close()
        dali_runs.append(steps * views_per_step / seconds)
        if dataset is not None:
            ref = reference_loader(
                shard_dir, recipe, split=split, batch_size=batch, workers=workers, seed=repeat, dataset=dataset
            )
            try:
                seconds = _time_steps(ref, ref_warmup, ref_steps, lambda: None)
            finally:
                ref.close()
            ref_runs.append(ref_steps * views_per_step / seconds)
    views_per_s = statistics.median(dali_runs)
    baseline_views_per_s = statistics.median(ref_runs) if ref_runs else None
    return {
        "views_per_s": views_per_s,
        "baseline_views_per_s": baseline_views_per_s,
        "ratio": views_per_s / baseline_views_per_s if baseline_views_per_s else None,
        "k": k,
        "batch": batch,
        "device": str(loader.device),
        "repeats": repeats,
        "steps": steps,
        "baseline_steps": ref_steps if baseline else None,
        "workers": workers,
        "dali_runs": dali_runs,
        "baseline_runs": ref_runs,
        "num_threads": loader.num_threads,
        "steps_per_run": per_run,
        "cpus": len(os.sched_getaffinity(0)),
        "samples": loader.shares[0],
        "image_size": list(loader.image_size),
        "shard_dir": str(shard_dir),
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # 1-minute, before and after
    }
