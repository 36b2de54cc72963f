"""Named recipes for `ssrr pretrain --preset`: `paper` (the default, exactly the paper's settings) and `fast`
(the same method, tuned for accuracy per second of pretraining; every choice is measured in docs/fast.md).

A preset sits above the config: it replaces RunConfig fields (`dataclasses.replace`) that were not given (typed
on the command line, or set by `ssrr reproduce`). `fast` trains on views at 3/4 of the images' side (24 px on
CIFAR; evaluation stays at the full side) and ends by recomputing the backbone's BatchNorm statistics on the
clean images. Its length is a time budget of 15 minutes of pretraining (`--time-budget`, ssrr/train/budget.py:
the run measures its own pace and plans its steps), so it ends in time on any machine; a typed `--epochs` or
`--time-budget` replaces it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, get_args

from ssrr.config import RunConfig
from ssrr.declare import field_types

PRESETS: tuple[str, ...] = get_args(field_types(RunConfig)["preset"])  # paper, fast

# The fast preset's values; docs/fast.md measures each one (ablations over seeds, screens of the other values).
FAST: dict[str, Any] = {
    "k": 8,  # fewer views per image than the paper's 32, more epochs in the same time
    "batch": 32,  # M: K=8 x M=32 beat K=4 x M=64 (and K=2 x M=128) at the same views on the validation split
    "lr": 5e-3,  # Adam peak rate (the paper: 1e-3 constant)
    "lr_schedule": "cosine",  # to zero at the last step
    "warmup_epochs": 0.5,  # the same warm-up steps as K=4 x M=64's one epoch
    "precision": "auto",  # bf16 where it is native (fp16 on older GPUs), else fp32
    "bn_recalibrate": True,  # BatchNorm statistics of the clean, full-size images (not of the small crops)
}
FAST_VIEW_SCALE = 0.75  # training views at this fraction of the images' side (24 px of 32)
FAST_TIME_BUDGET_S = 900.0  # 15 minutes of pretraining, planned from the run's own pace


def preset_values(name: str) -> dict[str, Any]:
    """The RunConfig values a preset sets, except what depends on the data (the view side)."""
    return dict(FAST) if name == "fast" else {}


def fast_view_side(image_size: tuple[int, int]) -> int:
    """The fast preset's side of the training views for images of `image_size` (H, W)."""
    return max(1, round(FAST_VIEW_SCALE * min(image_size)))


def apply_preset(config: RunConfig, given: set[str], image_size: Callable[[], tuple[int, int]]) -> RunConfig:
    """`config` with its preset (`config.preset`) applied to the fields not in `given` (fields typed on the
    command line win; `config` is validated, so its preset is known). `image_size()` -> (H, W) is called only
    when the preset's view side depends on the data."""
    values = {key: value for key, value in preset_values(config.preset).items() if key not in given}
    if config.preset == "fast":
        if not {"epochs", "time_budget_s"} & given:
            values["time_budget_s"] = FAST_TIME_BUDGET_S  # the epochs (200 unless typed) are then only a cap
        if "view_size" not in given:
            values["view_size"] = fast_view_side(image_size())
    return replace(config, **values)
