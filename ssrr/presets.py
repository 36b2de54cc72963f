"""Named recipes for `ssrr pretrain --preset`: `paper` (the default, exactly the paper's settings) and `fast`
(the same method, tuned for accuracy per second of pretraining; every choice is measured in docs/fast.md).

A preset is a set of RunConfig values; options typed on the command line override it. `fast` is sized as a
budget of work rather than a number of epochs: the epochs are those that process `FAST_VIEW_PIXELS` view
pixels (K views x images x H x W per epoch), so a dataset of larger or more images gets fewer epochs and the
run takes about the same time as conv4 on CIFAR-10 (about 13 minutes on 2 CPU cores with native bf16).
"""

from __future__ import annotations

from typing import Any

from ssrr.errors import SsrrError

PRESETS = ("paper", "fast")

# The fast preset's values; docs/fast.md measures each one (ablations over seeds, screens of the other values).
FAST: dict[str, Any] = {
    "k": 4,  # fewer views per image, more epochs in the same time
    "batch": 128,  # M
    "lr": 1e-2,  # Adam peak rate (the paper: 1e-3 constant)
    "lr_schedule": "cosine",  # to zero at the last step
    "warmup_epochs": 1.0,
    "precision": "auto",  # bf16 where it is native (fp16 on older GPUs), else fp32
}
FAST_EPOCHS_CIFAR = 24  # the budget: this many epochs of K=4 views of 50,000 32x32 images
FAST_VIEW_PIXELS = FAST_EPOCHS_CIFAR * 4 * 50_000 * 32 * 32


def check_preset(name: str) -> None:
    if name not in PRESETS:
        raise SsrrError(f"--preset must be one of {', '.join(PRESETS)}, got {name!r}")


def preset_values(name: str) -> dict[str, Any]:
    """The RunConfig values a preset sets, except what depends on the data (`fast_epochs`)."""
    check_preset(name)
    return dict(FAST) if name == "fast" else {}


def fast_epochs(k: int, train_samples: int, image_size: tuple[int, int]) -> int:
    """The epochs of the fast preset's budget for K views of `train_samples` images of `image_size` (H, W)."""
    per_epoch = k * train_samples * image_size[0] * image_size[1]
    if per_epoch <= 0:
        raise SsrrError(f"the fast preset needs a training split with images, got {train_samples} samples")
    return max(1, round(FAST_VIEW_PIXELS / per_epoch))


def apply_preset(values: dict[str, Any], name: str, typed: set[str], data_shape: Any) -> dict[str, Any]:
    """`values` (RunConfig fields) with preset `name` applied under the options in `typed` (typed on the
    command line: they win). `data_shape()` -> (training samples, (H, W)) is called only when the preset's
    epochs depend on the data."""
    merged = dict(values)
    merged.update({key: value for key, value in preset_values(name).items() if key not in typed})
    merged["preset"] = name
    if name == "fast" and "epochs" not in typed:
        samples, image_size = data_shape()
        merged["epochs"] = fast_epochs(merged["k"], samples, image_size)
    return merged
