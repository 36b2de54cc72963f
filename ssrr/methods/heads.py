"""Small heads the baselines share."""

from __future__ import annotations

from torch import nn


def mlp_head(in_dim: int, out_dim: int, hidden: int = 256) -> nn.Sequential:
    """Linear -> BatchNorm1d -> LeakyReLU -> Linear: the projection head of SimCLR and DeepCluster here."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.LeakyReLU(), nn.Linear(hidden, out_dim))
