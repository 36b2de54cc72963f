"""PCA whitening, k-means (incl. empty clusters) and inverse-frequency weights."""

from __future__ import annotations

import torch

from ssrr.cluster import (
    inertia,
    kmeans,
    kmeans_plus_plus,
    lloyd,
    one_minus_frequency_weights,
    pca_dims,
    pca_whiten,
)


def test_pca_whitening_gives_unit_uncorrelated_components() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 5, generator=g, dtype=torch.float64) @ torch.randn(5, 5, generator=g, dtype=torch.float64)
    w = pca_whiten(x, 3)
    covariance = w.T @ w / (len(w) - 1)
    assert w.shape == (2000, 3)
    assert torch.allclose(covariance, torch.eye(3, dtype=torch.float64), atol=1e-3)


def test_kmeans_recovers_well_separated_clusters() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    truth = torch.arange(3).repeat_interleave(50)
    x = centres[truth] + 0.1 * torch.randn(150, 2, generator=g)
    _, found = kmeans(x, 3, generator=g)
    # the same partition up to renumbering: each true cluster maps to exactly one found cluster
    pairs = {(int(t), int(f)) for t, f in zip(truth, found, strict=True)}
    assert len(pairs) == 3 and len({f for _, f in pairs}) == 3


def test_kmeans_keeps_every_cluster_in_use() -> None:
    # more clusters than natural groups, and initial centroids drawn from duplicated points: plain Lloyd
    # iterations leave clusters empty; re-seeding from the largest cluster keeps all k in use
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.zeros(40, 2), torch.ones(40, 2)]) + 1e-3 * torch.randn(80, 2, generator=g)
    x[:20] = 0.0  # exact duplicates
    for seed in range(5):
        _, assignments = kmeans(x, 6, generator=torch.Generator().manual_seed(seed))
        assert (torch.bincount(assignments, minlength=6) > 0).all()


def test_pca_keeps_d_dimensions_or_half_from_512() -> None:
    assert [pca_dims(d) for d in (64, 256, 511, 512, 1024)] == [64, 256, 511, 256, 512]


def test_kmeans_plus_plus_seeds_far_apart() -> None:
    # three tight, far groups: D^2 sampling puts one seed in each (uniform seeding would often not)
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0]])
    x = centres.repeat_interleave(200, 0) + 0.01 * torch.randn(600, 2, generator=g)
    for seed in range(10):
        seeds = kmeans_plus_plus(x, 3, torch.Generator().manual_seed(seed))
        groups = torch.cdist(seeds, centres).argmin(1)
        assert sorted(groups.tolist()) == [0, 1, 2]


def test_kmeans_keeps_the_restart_of_lowest_inertia() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 4, generator=g)
    _, assignments = kmeans(x, 7, iterations=3, generator=torch.Generator().manual_seed(5), restarts=5)
    centroids = torch.zeros(7, 4).index_add_(0, assignments, x) / torch.bincount(assignments, minlength=7)[:, None]
    replay = torch.Generator().manual_seed(5)
    singles = [inertia(x, *lloyd(x, kmeans_plus_plus(x, 7, replay), 3, replay)) for _ in range(5)]
    assert len(set(singles)) > 1  # the restarts differ, so keeping the best matters
    assert abs(inertia(x, *kmeans(x, 7, 3, torch.Generator().manual_seed(5), 5)) - min(singles)) < 1e-6
    assert inertia(x, centroids, assignments) <= min(singles) + 1e-4


def test_one_minus_frequency_weights() -> None:
    assignments = torch.tensor([0, 0, 0, 1, 2, 2])
    w = one_minus_frequency_weights(assignments, 4)
    torch.testing.assert_close(w, torch.tensor([0.5, 5 / 6, 4 / 6, 1.0]))
