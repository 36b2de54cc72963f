"""PCA whitening and k-means in torch (on the training device): DeepCluster's clustering step.

As the authors ran DeepCluster: PCA keeps D dimensions (D/2 when D >= 512, `pca_dims`), k-means is
k-means++-seeded with 5 restarts of at most 30 Lloyd iterations, the lowest inertia kept (`kmeans`), and the
classification loss weighs each cluster by 1 - its frequency (`one_minus_frequency_weights`).
"""

from __future__ import annotations

import torch
from torch import Tensor

ITERATIONS = 30  # Lloyd iterations per restart (the authors')
RESTARTS = 5  # k-means++ initialisations, the lowest inertia kept (the authors')
PCA_HALVES_FROM = 512  # from this feature size on, PCA keeps D/2 dimensions


def pca_dims(feature_dim: int) -> int:
    """Dimensions PCA keeps: D, or D/2 when D >= 512 (the authors' DeepCluster)."""
    return feature_dim // 2 if feature_dim >= PCA_HALVES_FROM else feature_dim


def pca_whiten(x: Tensor, dim: int | None = None, eps: float = 1e-5) -> Tensor:
    """Project centred rows of `x` on their top `dim` principal axes, each scaled to unit variance."""
    centred = x - x.mean(0, keepdim=True)
    covariance = centred.T @ centred / max(len(x) - 1, 1)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    order = eigenvalues.argsort(descending=True)[: dim or x.shape[1]]
    return centred @ eigenvectors[:, order] / (eigenvalues[order] + eps).sqrt()


def kmeans_plus_plus(x: Tensor, clusters: int, generator: torch.Generator | None = None) -> Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): the first centroid uniformly, each next one drawn with
    probability proportional to the squared distance to the nearest centroid chosen so far. (clusters, D)."""
    n = len(x)
    first = int(torch.randint(n, (1,), generator=generator, device="cpu"))
    chosen = [first]
    nearest = ((x - x[first]) ** 2).sum(1)
    for _ in range(1, clusters):
        weights = nearest.double().cpu()
        total = float(weights.sum())
        if total <= 0:  # every point sits on a centroid: any unchosen point will do
            weights = torch.ones(n, dtype=torch.float64)
            weights[chosen] = 0
        pick = int(torch.multinomial(weights, 1, generator=generator))
        chosen.append(pick)
        nearest = torch.minimum(nearest, ((x - x[pick]) ** 2).sum(1))
    return x[torch.tensor(chosen, device=x.device)].clone()


def lloyd(
    x: Tensor, centroids: Tensor, iterations: int = ITERATIONS, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Lloyd's iterations from `centroids` (changed in place); returns (centroids, assignments).

    An empty cluster is re-seeded with a point of the currently largest cluster, slightly perturbed, so all
    clusters stay in use (DeepCluster's remedy for trivial solutions).
    """
    clusters = len(centroids)
    for _ in range(iterations):
        assignments = torch.cdist(x, centroids).argmin(1)
        counts = torch.bincount(assignments, minlength=clusters)
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


def inertia(x: Tensor, centroids: Tensor, assignments: Tensor) -> float:
    """Sum of squared distances of the rows to their centroids."""
    return float(((x - centroids[assignments]) ** 2).sum())


def kmeans(
    x: Tensor,
    clusters: int,
    iterations: int = ITERATIONS,
    generator: torch.Generator | None = None,
    restarts: int = RESTARTS,
) -> tuple[Tensor, Tensor]:
    """k-means on rows of `x`: `restarts` k-means++ seedings, each followed by at most `iterations` Lloyd
    iterations; the clustering of lowest inertia is returned as (centroids (clusters, D), assignments (N,))."""
    n = len(x)
    if n < clusters:
        raise ValueError(f"k-means needs at least {clusters} points (one per cluster), got {n}")
    best: tuple[float, Tensor, Tensor] | None = None
    for _ in range(max(1, restarts)):
        centroids, assignments = lloyd(x, kmeans_plus_plus(x, clusters, generator), iterations, generator)
        score = inertia(x, centroids, assignments)
        if best is None or score < best[0]:
            best = (score, centroids, assignments)
    assert best is not None
    return best[1], best[2]


def one_minus_frequency_weights(assignments: Tensor, clusters: int) -> Tensor:
    """Per-cluster loss weights 1 - (cluster size / N): the authors' DeepCluster class weights."""
    counts = torch.bincount(assignments, minlength=clusters).float()
    return 1.0 - counts / max(len(assignments), 1)
