"""Weighted k-NN accuracy on a clustered toy problem."""

from __future__ import annotations

import pytest
import torch

from ssrr.eval.features import Features
from ssrr.eval.knn import knn_accuracy, knn_predict


def clusters(n: int, seed: int, spread: float) -> Features:
    g = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(torch.randn(5, 32, generator=torch.Generator().manual_seed(7)), dim=1)
    y = torch.randint(0, 5, (n,), generator=g)
    z = directions[y] * 4 + spread * torch.randn(n, 32, generator=g)
    return Features(z, y, torch.full_like(y, -1), torch.arange(n))


def test_knn_on_separate_clusters_is_perfect_and_on_noise_is_chance() -> None:
    train, test = clusters(1000, 1, 0.3), clusters(200, 2, 0.3)
    assert knn_accuracy(train, test, 200, 0.1) == pytest.approx(100.0)
    # Noise on both sides (seeded): every query votes independently, so chance is 20% +- ~3 over 200 queries.
    # (Clustered queries against a noise gallery would vote cluster by cluster: 0, 20, 40, ... by luck.)
    g = torch.Generator().manual_seed(3)
    noise = Features(torch.randn(1000, 32, generator=g), train.fine, train.coarse, train.index)
    noisy_test = Features(torch.randn(200, 32, generator=g), test.fine, test.coarse, test.index)
    assert knn_accuracy(noise, noisy_test, 200, 0.1) < 35.0


def test_votes_are_weighted_by_similarity() -> None:
    gallery = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.05]])
    # k=3: one very similar neighbour of class 0 outvotes two dissimilar ones of class 1 at temperature 0.1
    scores = knn_predict(gallery, labels, query, 2, neighbours=3, temperature=0.1)
    assert scores.argmax(1).item() == 0
    # a very high temperature makes the vote a plain majority
    assert knn_predict(gallery, labels, query, 2, neighbours=3, temperature=1e6).argmax(1).item() == 1
