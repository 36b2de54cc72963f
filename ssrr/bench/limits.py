"""The physical limit beside a throughput figure: a step's FLOPs against what the device can do.

The step's FLOPs are counted, not estimated: one step runs under torch's `FlopCounterMode`, which counts every
matrix multiply and convolution (forward and backward) at the aten level. The peak is measured, not read from a
datasheet: the best of a few large square matrix multiplies in the step's precision on the same device and threads
(an attainable peak for dense GEMM; convolutions and memory-bound ops reach less). `fraction_of_peak` = achieved
GFLOP/s / that peak says how far a figure is from the machine's limit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ssrr.precision import Execution

GEMM_SIDE = 2048


def count_flops(step: Callable[[], Any]) -> int:
    """FLOPs of one call of `step` (matrix multiplies and convolutions, forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def gemm_peak_flops(execution: Execution, side: int = GEMM_SIDE, repeats: int = 3) -> float:
    """FLOP/s of the best of `repeats` (side x side) @ (side x side) products in the execution's precision."""
    dtype = execution.autocast_dtype or torch.float32
    a = torch.randn(side, side, device=execution.device).to(dtype)
    b = torch.randn(side, side, device=execution.device).to(dtype)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        if execution.device.type == "cuda":
            torch.cuda.synchronize(execution.device)
        start = time.perf_counter()
        torch.mm(a, b)
        if execution.device.type == "cuda":
            torch.cuda.synchronize(execution.device)
        best = min(best, time.perf_counter() - start)
    return 2 * side**3 / best


def step_limit(step: Callable[[], Any], execution: Execution, steps_per_s: float) -> dict[str, Any]:
    """The step's GFLOP, the achieved GFLOP/s at `steps_per_s`, the measured GEMM peak and the fraction of it."""
    flops = count_flops(step)
    peak = gemm_peak_flops(execution)
    achieved = flops * steps_per_s
    return {
        "step_gflop": flops / 1e9,
        "achieved_gflops": achieved / 1e9,
        "peak_gflops": peak / 1e9,
        "fraction_of_peak": achieved / peak if peak else None,
        "peak_is": f"best of 3 {GEMM_SIDE}x{GEMM_SIDE} matrix multiplies, {execution.precision}, {execution.device}",
    }
