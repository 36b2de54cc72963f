"""PCA whitening and k-means in torch (on the training device): DeepCluster's clustering step."""

from __future__ import annotations

import torch
from torch import Tensor


def pca_whiten(x: Tensor, dim: int | None = None, eps: float = 1e-5) -> Tensor:
    """Project centred rows of `x` on their top `dim` principal axes, each scaled to unit variance."""
    centred = x - x.mean(0, keepdim=True)
    covariance = centred.T @ centred / max(len(x) - 1, 1)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    order = eigenvalues.argsort(descending=True)[: dim or x.shape[1]]
    return centred @ eigenvectors[:, order] / (eigenvalues[order] + eps).sqrt()


def kmeans(x: Tensor, k: int, iterations: int = 20, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means on rows of `x`; returns (centroids (k, D), assignments (N,)).

    An empty cluster is re-seeded with a point of the currently largest cluster, slightly perturbed, so all
    k clusters stay in use (DeepCluster's remedy for trivial solutions).
    """
    n = len(x)
    if n < k:
        raise ValueError(f"k-means needs at least k={k} points, got {n}")
    centroids = x[torch.randperm(n, generator=generator, device="cpu")[:k].to(x.device)].clone()
    assignments = torch.zeros(n, dtype=torch.long, device=x.device)
    for _ in range(iterations):
        assignments = torch.cdist(x, centroids).argmin(1)
        counts = torch.bincount(assignments, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, assignments, x)
        nonempty = counts > 0
        centroids[nonempty] = sums[nonempty] / counts[nonempty, None].to(x.dtype)
        for empty in torch.nonzero(~nonempty).flatten().tolist():
            largest = int(counts.argmax())
            members = torch.nonzero(assignments == largest).flatten()
            pick = members[int(torch.randint(len(members), (1,), generator=generator, device="cpu"))]
            noise = 1e-4 * torch.randn(x.shape[1], generator=generator, device="cpu").to(x.device)
            centroids[empty] = x[pick] + noise
            assignments[pick] = empty
            counts[largest] -= 1
            counts[empty] = 1
    return centroids, torch.cdist(x, centroids).argmin(1)


def inverse_frequency_weights(assignments: Tensor, k: int) -> Tensor:
    """Per-cluster loss weights proportional to 1 / size (empty clusters weigh 0), mean weight 1 over samples."""
    counts = torch.bincount(assignments, minlength=k).float()
    weights = torch.where(counts > 0, 1.0 / counts.clamp(min=1), torch.zeros_like(counts))
    return weights * len(assignments) / (weights[assignments].sum())
