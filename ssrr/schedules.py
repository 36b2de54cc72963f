"""Schedules as pure functions of the step or epoch (unit-tested without an optimizer or a loader).

Learning rate: `constant` is the paper's (Adam 1e-3 throughout); `cosine` is a linear warm-up from ~0 to the
peak over `warmup_steps`, then a half cosine from the peak to 0 at `total_steps` (the fast preset, docs/fast.md).
View size (progressive resizing): the side of the training views goes linearly from a first to a last side.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ssrr.errors import SsrrError

SCHEDULES = ("constant", "cosine")


def check_schedule(schedule: str) -> None:
    if schedule not in SCHEDULES:
        raise SsrrError(f"--lr-schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")


def lr_factor(schedule: str, step: int, total_steps: int, warmup_steps: int = 0) -> float:
    """The multiplier of the peak learning rate at optimizer step `step` (0-based) of `total_steps`."""
    check_schedule(schedule)
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, total_steps: int | Callable[[], int], warmup_steps: int = 0
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """A LambdaLR stepping `lr_factor` once per optimizer step; None for a constant rate without warm-up, so
    the paper's runs carry no scheduler state at all. `total_steps` may be a callable read at every step (a
    time budget's plan, which changes as the run measures its pace)."""
    check_schedule(schedule)
    if schedule == "constant" and warmup_steps == 0:
        return None
    total = total_steps if callable(total_steps) else lambda: total_steps
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(schedule, step, total(), warmup_steps))


def view_side(epoch: int, epochs: int, first: int, last: int) -> int:
    """The side of the training views in epoch `epoch` (0-based) of `epochs`: linear from `first` (epoch 0) to
    `last` (the last epoch), rounded to whole pixels."""
    if epochs <= 1:
        return last
    progress = min(1.0, max(0.0, epoch / (epochs - 1)))
    return round(first + (last - first) * progress)
