"""Recomputing a network's BatchNorm statistics on chosen inputs (no data-loading code: batches come in).

Training views are crops, colour-jittered and (in the fast preset) smaller than the images, so the running
means and variances a run ends with describe inputs unlike the clean, full-size images every evaluation feeds
the frozen backbone. One forward pass over clean training images in train mode, with BatchNorm's cumulative
average (momentum None), replaces them with those images' statistics; no weight changes (docs/fast.md).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


def batchnorm_layers(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of `module` that keep running statistics."""
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_batchnorm(module: nn.Module, batches: Iterable[Tensor]) -> int:
    """Replace the running statistics of every BatchNorm layer of `module` by the exact mean and (unbiased)
    variance over `batches` (each a batch of inputs; every batch weighs equally); return the batches seen.
    Weights and the module's train/eval mode are left as they were. A module without BatchNorm, or no
    batches, leaves the statistics untouched."""
    layers = batchnorm_layers(module)
    if not layers:
        return 0
    saved = [
        (layer, layer.momentum, _stat(layer.running_mean).clone(), _stat(layer.running_var).clone()) for layer in layers
    ]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative moving average: the plain mean over the batches
    was_training = module.training
    module.train()
    seen = 0
    try:
        for batch in batches:
            module(batch)
            seen += 1
    finally:
        module.train(was_training)
        for layer, momentum, mean, var in saved:
            layer.momentum = momentum
            if seen == 0:
                _stat(layer.running_mean).copy_(mean)
                _stat(layer.running_var).copy_(var)
    return seen


def _stat(buffer: Tensor | None) -> Tensor:
    assert buffer is not None  # batchnorm_layers keeps only layers that track running statistics
    return buffer
