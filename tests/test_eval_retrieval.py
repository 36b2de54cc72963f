"""Retrieval: an exact duplicate comes first; precision@k and AP by hand; the grid PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssrr.eval.retrieval import grid_size, nearest, pick_queries, retrieval_grid, retrieval_metrics


def test_exact_duplicate_is_the_first_neighbour() -> None:
    g = torch.Generator().manual_seed(0)
    gallery = torch.randn(500, 64, generator=g)
    queries = torch.randn(20, 64, generator=g)
    gallery[123] = queries[7] * 2.5  # same direction: cosine similarity 1
    sims, rows = nearest(gallery, queries, 10)
    assert rows[7, 0].item() == 123 and sims[7, 0].item() == pytest.approx(1.0)


def test_searching_its_own_split_leaves_the_query_out() -> None:
    z = torch.randn(50, 8, generator=torch.Generator().manual_seed(1))
    _, rows = nearest(z, z, 5, exclude=torch.arange(50))
    assert not (rows == torch.arange(50)[:, None]).any()


def test_precision_and_average_precision_by_hand() -> None:
    gallery = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    g_labels = torch.tensor([0, 1, 0, 1])
    query = torch.tensor([[1.0, 0.02]])
    m = retrieval_metrics(gallery, g_labels, query, torch.tensor([0]), ks=(1, 2, 4))
    # ranking: rows 0 (rel), 1 (not), 3 (not), 2 (rel)
    assert m["precision_at"] == {"1": pytest.approx(100.0), "2": pytest.approx(50.0), "4": pytest.approx(50.0)}
    assert m["ap"][0].item() == pytest.approx((1 / 1 + 2 / 4) / 2)


def test_queries_are_spread_over_classes() -> None:
    labels = torch.tensor([0] * 10 + [1] * 10 + [2] * 10)
    picked = pick_queries(labels, 6, seed=1)
    assert sorted(labels[picked].tolist()) == [0, 0, 1, 1, 2, 2]


def test_grid_png_has_the_expected_size_and_red_query_frames(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
    neighbours = [[rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(10)] for _ in range(3)]
    same = [[i % 2 == 0 for i in range(10)] for _ in range(3)]
    png = retrieval_grid(images, neighbours, same, tmp_path / "grid.png")
    image = np.asarray(Image.open(png).convert("RGB"))
    width, height = grid_size(3)
    assert image.shape == (height, width, 3)
    assert image.std() > 0
    assert tuple(image[1, 1]) == (220, 30, 30)  # the first query's frame is red
