"""Named recipes for `ssrr pretrain --preset`: `paper` (the default, exactly the paper's settings) and `fast`
(the same method, tuned for accuracy per second of pretraining; every choice is measured in docs/fast.md).

A preset is a set of RunConfig values; options typed on the command line override it. `fast` trains on views
at 3/4 of the images' side (24 px on CIFAR; evaluation stays at the full side) and ends by recomputing the
backbone's BatchNorm statistics on the clean images. Its length is a time budget of 15 minutes of pretraining
(`--time-budget`, ssrr/train/budget.py: the run measures its own pace and plans its steps), so it ends in time
on any machine; a typed `--epochs` or `--time-budget` replaces it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ssrr.errors import SsrrError

PRESETS = ("paper", "fast")

# The fast preset's values; docs/fast.md measures each one (ablations over seeds, screens of the other values).
FAST: dict[str, Any] = {
    "k": 4,  # fewer views per image, more epochs in the same time
    "batch": 64,  # M, the paper's: per view seen, smaller batches learn more (128 and 32 in docs/fast.md)
    "lr": 5e-3,  # Adam peak rate (the paper: 1e-3 constant)
    "lr_schedule": "cosine",  # to zero at the last step
    "warmup_epochs": 1.0,
    "precision": "auto",  # bf16 where it is native (fp16 on older GPUs), else fp32
    "bn_recalibrate": True,  # BatchNorm statistics of the clean, full-size images (not of the small crops)
}
FAST_VIEW_SCALE = 0.75  # training views at this fraction of the images' side (24 px of 32)
FAST_TIME_BUDGET_S = 900.0  # 15 minutes of pretraining, planned from the run's own pace


def check_preset(name: str) -> None:
    if name not in PRESETS:
        raise SsrrError(f"--preset must be one of {', '.join(PRESETS)}, got {name!r}")


def preset_values(name: str) -> dict[str, Any]:
    """The RunConfig values a preset sets, except what depends on the data (the view side)."""
    check_preset(name)
    return dict(FAST) if name == "fast" else {}


def fast_view_side(image_size: tuple[int, int]) -> int:
    """The fast preset's side of the training views for images of `image_size` (H, W)."""
    return max(1, round(FAST_VIEW_SCALE * min(image_size)))


def apply_preset(
    values: dict[str, Any], name: str, typed: set[str], image_size: Callable[[], tuple[int, int]]
) -> dict[str, Any]:
    """`values` (RunConfig fields) with preset `name` applied under the options in `typed` (typed on the
    command line: they win). `image_size()` -> (H, W) is called only when the preset's view side depends on
    the data."""
    merged = dict(values)
    merged.update({key: value for key, value in preset_values(name).items() if key not in typed})
    merged["preset"] = name
    if name != "fast":
        return merged
    if not {"epochs", "time_budget_s"} & typed:
        merged["time_budget_s"] = FAST_TIME_BUDGET_S  # the epochs (200 unless typed) are then only a cap
    if "view_size" not in typed:
        merged["view_size"] = fast_view_side(image_size())
    return merged
