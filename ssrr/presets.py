"""Named recipes for `ssrr pretrain --preset`: `paper` (the default, exactly the paper's settings) and `fast`
(the same method, tuned for accuracy per second of pretraining; every choice is measured in docs/fast.md).

A preset is a set of RunConfig values; options typed on the command line override it. `fast` trains on views
at 3/4 of the images' side (24 px on CIFAR; evaluation stays at the full side) and ends by recomputing the
backbone's BatchNorm statistics on the clean images. Its length is a budget of time rather than a number of
epochs: the epochs whose views cost what 29 epochs of its K=4, 24-px views of CIFAR-10 cost (775-881 s measured
on 2 CPU cores with native bf16, docs/fast.md), so larger images or more of them get fewer epochs.
"""

from __future__ import annotations

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
FAST_EPOCHS_CIFAR = 29  # the budget: the time of this many epochs of K=4 24-px views of 50,000 images
# A view costs its pixels plus a fixed share (the relation head, the optimizer, per-view pipeline work) worth
# this many pixels: fitted on conv4 to an epoch's time with 24-, 32- and 48-px views (docs/fast.md, "The budget").
VIEW_OVERHEAD_PIXELS = 550
FAST_BUDGET = FAST_EPOCHS_CIFAR * 4 * 50_000 * (24 * 24 + VIEW_OVERHEAD_PIXELS)


def check_preset(name: str) -> None:
    if name not in PRESETS:
        raise SsrrError(f"--preset must be one of {', '.join(PRESETS)}, got {name!r}")


def preset_values(name: str) -> dict[str, Any]:
    """The RunConfig values a preset sets, except what depends on the data (`fast_epochs`)."""
    check_preset(name)
    return dict(FAST) if name == "fast" else {}


def fast_view_side(image_size: tuple[int, int]) -> int:
    """The fast preset's side of the training views for images of `image_size` (H, W)."""
    return max(1, round(FAST_VIEW_SCALE * min(image_size)))


def fast_epochs(k: int, train_samples: int, view_side: int) -> int:
    """The epochs of the fast preset's time budget for K views of side `view_side` of `train_samples` images."""
    if train_samples <= 0:
        raise SsrrError(f"the fast preset needs a training split with images, got {train_samples} samples")
    per_epoch = k * train_samples * (view_side * view_side + VIEW_OVERHEAD_PIXELS)
    return max(1, round(FAST_BUDGET / per_epoch))


def apply_preset(values: dict[str, Any], name: str, typed: set[str], data_shape: Any) -> dict[str, Any]:
    """`values` (RunConfig fields) with preset `name` applied under the options in `typed` (typed on the
    command line: they win). `data_shape()` -> (training samples, (H, W)) is called only when the preset's
    view side or epochs depend on the data."""
    merged = dict(values)
    merged.update({key: value for key, value in preset_values(name).items() if key not in typed})
    merged["preset"] = name
    if name != "fast" or {"epochs", "view_size"} <= typed:
        return merged
    samples, image_size = data_shape()
    if "view_size" not in typed:
        merged["view_size"] = fast_view_side(image_size)
    if "epochs" not in typed:
        first = merged["view_size"] or min(image_size)  # RunConfig.view_sides' rule (config sits a layer above)
        last = merged.get("view_size_end") or first
        merged["epochs"] = fast_epochs(merged["k"], samples, round((first + last) / 2))  # a ramp: its mean side
    return merged
