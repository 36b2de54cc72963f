"""Evaluation helpers only the tests use."""

from __future__ import annotations

import torch
from torch import nn

from ssrr.eval.features import Features, embed
from ssrr.precision import Execution


def features_from_tensors(
    backbone: nn.Module,
    images: torch.Tensor,
    fine: torch.Tensor,
    *,
    batch: int = 256,
    execution: Execution | None = None,
) -> Features:
    """The same as `extract_features` for images already in memory: the reference the shard path is checked against."""
    was_training = backbone.training
    backbone.eval()
    try:
        z = torch.cat([embed(backbone, images[s : s + batch], execution) for s in range(0, len(images), batch)])
    finally:
        backbone.train(was_training)
    n = len(images)
    return Features(z, fine.long(), torch.full((n,), -1, dtype=torch.long), torch.arange(n))
