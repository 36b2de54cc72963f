"""What a `ViewLoader` checks and runs with: its arguments, its output size, DALI's errors as one line, and the
cores its pipeline's threads are started on."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator

import torch

from ssrr.errors import SsrrError

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def output_size(value: int | tuple[int, int] | None, default: tuple[int, int]) -> tuple[int, int]:
    if value is None:
        return default
    if isinstance(value, int):
        return (value, value)
    return (int(value[0]), int(value[1]))


def dali_message(exc: BaseException) -> str:
    """DALI's multi-line report as one line: the operator, and the error it encountered."""
    text = str(exc)
    operator = re.search(r"Error in (?:CPU|GPU|MIXED) operator `([^`]+)`", text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    detail = ""
    if "encountered:" in text:
        after = text.split("encountered:", 1)[1]
        detail = next((line.strip() for line in after.splitlines() if line.strip()), "")
    if not detail:
        detail = next((ln for ln in lines if "Assert" in ln or "rror" in ln), lines[0] if lines else repr(exc))
    detail = re.sub(r"^\[[^\]]*\]\s*", "", detail)  # the [/opt/dali/...cc:123] source location
    detail = re.sub(r"^Assert on \"[^\"]*\" failed:\s*", "", detail)
    where = f"{operator.group(1)}: " if operator else ""
    one = f"{where}{detail}"
    return one if len(one) <= 400 else one[:397] + "..."


def check_arguments(batch_size: int, rank: int, world_size: int, dtype: torch.dtype, prefetch: int) -> None:
    if batch_size < 1:
        raise SsrrError(f"batch_size must be at least 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise SsrrError(f"rank {rank} is not in 0..{world_size - 1} (world_size {world_size})")
    if dtype not in DTYPES:
        raise SsrrError(f"dtype must be one of float32, float16, bfloat16, got {dtype}")
    if prefetch < 1:
        raise SsrrError(f"prefetch must be at least 1, got {prefetch}")


@contextlib.contextmanager
def threads_created_on(cpus: set[int] | None) -> Iterator[None]:
    """Threads started inside run on `cpus` (they inherit the creating thread's affinity); this thread's own
    affinity is restored on leaving. None: no change."""
    if not cpus or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)
