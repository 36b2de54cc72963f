"""Semi-supervised label subsets: class-balanced, seeded, nested across fractions; the accuracy PNG."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssrr.errors import SsrrError
from ssrr.eval.semi import nested_subsets, parse_fractions, semi_png


def test_subsets_are_balanced_nested_and_seeded() -> None:
    labels = torch.arange(10).repeat_interleave(500)[torch.randperm(5000, generator=torch.Generator().manual_seed(0))]
    fractions = [0.01, 0.1, 0.25, 0.5, 1.0]
    subsets = nested_subsets(labels, fractions, seed=3)
    for f in fractions:
        counts = torch.bincount(labels[subsets[f]], minlength=10)
        assert counts.tolist() == [round(500 * f)] * 10, f
        assert len(subsets[f].unique()) == len(subsets[f])  # no repeats
    for small, large in itertools.pairwise(fractions):
        assert set(subsets[small].tolist()) <= set(subsets[large].tolist())
    assert len(subsets[1.0]) == 5000
    again = nested_subsets(labels, fractions, seed=3)
    other = nested_subsets(labels, fractions, seed=4)
    assert all(torch.equal(subsets[f], again[f]) for f in fractions)
    assert not torch.equal(subsets[0.1], other[0.1])


def test_a_tiny_fraction_keeps_one_label_per_class() -> None:
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    subset = nested_subsets(labels, [0.01], seed=1)[0.01]
    assert sorted(labels[subset].tolist()) == [0, 1, 2]


def test_fractions_are_parsed_and_checked() -> None:
    assert parse_fractions("1.0,0.01, 0.1") == [0.01, 0.1, 1.0]
    for bad in ("0", "1.5", "a,b", ""):
        with pytest.raises(SsrrError, match="--fractions"):
            parse_fractions(bad)


def test_accuracy_versus_labels_png(tmp_path: Path) -> None:
    png = semi_png([0.01, 0.1, 0.5, 1.0], [20.0, 40.0, 55.0, 60.0], tmp_path / "semi.png", "test")
    image = np.asarray(Image.open(png).convert("RGB"))
    assert image.shape == (500, 700, 3)
    assert image.std() > 0 and len(np.unique(image.reshape(-1, 3), axis=0)) > 10
