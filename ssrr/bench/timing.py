"""Timing helpers every benchmark shares: steps timed after a warm-up (endless batches: `ViewLoader.endless`)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator

from ssrr.pipelines.loader import Batch


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


def median_step_s(step: Callable[[Batch], None], batch: Batch, warmup: int, steps: int) -> float:
    """The step alone on one batch already in memory: median seconds over `steps` after `warmup`."""
    times = []
    for i in range(warmup + steps):
        started = time.perf_counter()
        step(batch)
        if i >= warmup:
            times.append(time.perf_counter() - started)
    return statistics.median(times)
