"""Recipes and the numpy parameter sampler (no DALI): values, validation, torchvision parity of the draws."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from ssrr.pipelines import recipes
from ssrr.pipelines.sampling import draw, resized_crop_windows
from torchvision import transforms as T

from ssrr.errors import SsrrError


def test_recipe_values() -> None:
    r = recipes.relational(32)
    assert (r.name, r.views, r.crop) == ("relational", 32, "resized")
    assert r.crop_scale == (0.08, 1.0) and r.crop_ratio == pytest.approx((3 / 4, 4 / 3))
    assert (r.flip_p, r.jitter_p, r.grayscale_p) == (0.5, 0.8, 0.2)
    assert (r.brightness, r.contrast, r.saturation, r.hue) == (0.8, 0.8, 0.8, 0.2)
    assert r.factor_range(r.brightness) == pytest.approx((0.2, 1.8))
    assert r.colour
    s = recipes.simclr()
    assert s.views == 2 and dataclasses.replace(s, name="relational", views=32) == r
    e = recipes.evaluation()
    assert (e.views, e.crop, e.flip_p, e.colour) == (1, "none", 0.0, False)
    c = recipes.crop_flip()
    assert (c.views, c.crop, c.padding, c.flip_p, c.colour) == (1, "pad", 4, 0.5, False)
    f = recipes.flip()
    assert (f.views, f.crop, f.padding, f.flip_p, f.colour) == (1, "none", 0, 0.5, False)
    rot = recipes.rotation()
    assert (rot.views, rot.rotate, rot.crop, rot.padding) == (4, True, "pad", 4)


@pytest.mark.parametrize("k", [1, 0, -3])
def test_relational_needs_two_views(k: int) -> None:
    with pytest.raises(SsrrError, match="K >= 2"):
        recipes.relational(k)


def test_recipe_validation() -> None:
    with pytest.raises(SsrrError, match="unknown recipe"):
        recipes.Recipe(name="mixup", views=1)
    with pytest.raises(SsrrError, match="probability"):
        dataclasses.replace(recipes.simclr(), jitter_p=1.5)
    with pytest.raises(SsrrError, match="hue"):
        dataclasses.replace(recipes.simclr(), hue=0.7)
    with pytest.raises(SsrrError, match="rotation views"):
        dataclasses.replace(recipes.rotation(), views=5)
    with pytest.raises(SsrrError, match="padding"):
        recipes.crop_flip(0)


def _torchvision_windows(n: int, size: int, seed: int) -> np.ndarray:
    torch.manual_seed(seed)
    image = torch.zeros(3, size, size)
    rows = [T.RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(n)]
    return np.asarray(rows, dtype=np.float64)  # top, left, h, w


@pytest.mark.parametrize("size", [32, 9])
def test_crop_windows_match_torchvision_distribution(size: int) -> None:
    """Area fraction, aspect ratio and position of the sampled windows vs torchvision's get_params.

    Tolerance: deciles of area fraction and log aspect ratio within 0.04 (n = 4000 each: the standard error of a
    decile is about 0.01), mean relative position within 0.03.
    """
    n = 4000
    top, left, h, w = (
        x.reshape(-1).astype(np.float64)
        for x in resized_crop_windows(np.random.default_rng(1), (n,), size, size, (0.08, 1.0), (3 / 4, 4 / 3))
    )
    ref = _torchvision_windows(n, size, seed=2)
    assert ((h >= 1) & (h <= size) & (w >= 1) & (w <= size)).all()
    assert ((top >= 0) & (top + h <= size) & (left >= 0) & (left + w <= size)).all()
    q = np.linspace(0.1, 0.9, 9)
    ours_area, ref_area = np.quantile(h * w / size**2, q), np.quantile(ref[:, 2] * ref[:, 3] / size**2, q)
    np.testing.assert_allclose(ours_area, ref_area, atol=0.04)
    ours_ratio, ref_ratio = np.quantile(np.log(w / h), q), np.quantile(np.log(ref[:, 3] / ref[:, 2]), q)
    np.testing.assert_allclose(ours_ratio, ref_ratio, atol=0.04 + (0.12 if size < 16 else 0))
    free_y = np.maximum(size - h, 1)
    free_ref = np.maximum(size - ref[:, 2], 1)
    assert abs(np.mean(top / free_y) - np.mean(ref[:, 0] / free_ref)) < 0.03


def test_crop_fallback_is_centre_crop() -> None:
    """A ratio range that never fits (very wide on a square image) falls back to the clamped centre crop."""
    top, left, h, w = resized_crop_windows(np.random.default_rng(0), (50,), 32, 32, (0.9, 1.0), (3.0, 4.0))
    assert (w == 32).all() and (h == round(32 / 3.0)).all()
    assert (top == (32 - h) // 2).all() and (left == 0).all()


def test_jitter_gating_and_rates() -> None:
    """p=0.8 jitter with identity values when off, p=0.2 grayscale folded into saturation, p=0.5 flips."""
    recipe = recipes.relational(8)
    p = draw(np.random.default_rng(0), recipe, 2000, 32, 32)
    n = p.jittered.size
    assert abs(p.jittered.mean() - 0.8) < 4 * math.sqrt(0.16 / n)
    assert abs(p.grayscale.mean() - 0.2) < 4 * math.sqrt(0.16 / n)
    assert abs(p.flip.mean() - 0.5) < 4 * math.sqrt(0.25 / n)
    off = ~p.jittered
    assert (p.brightness[off] == 1).all() and (p.contrast[off] == 1).all() and (p.hue_degrees[off] == 0).all()
    assert (p.saturation_factor[off] == 1).all()
    on = p.jittered
    for factor in (p.brightness[on], p.contrast[on], p.saturation_factor[on]):
        assert factor.min() >= 0.2 and factor.max() <= 1.8 and abs(factor.mean() - 1.0) < 0.02
    assert p.hue_degrees.min() >= -72 and p.hue_degrees.max() <= 72 and p.hue_degrees[on].std() > 35
    np.testing.assert_array_equal(p.saturation, p.saturation_factor * ~p.grayscale)
    start, end = p.roi()
    flipped = p.flip
    np.testing.assert_array_equal(start[..., 1][flipped], (p.left + p.width)[flipped])
    np.testing.assert_array_equal(end[..., 1][~flipped], (p.left + p.width)[~flipped])


def test_pad_crop_offsets_uniform() -> None:
    p = draw(np.random.default_rng(0), recipes.crop_flip(4), 9000, 32, 32)
    counts = np.bincount(p.top.reshape(-1), minlength=9)
    assert len(counts) == 9 and counts.min() > 800  # 9 offsets 0..8, 1000 each expected
    assert (p.height == 32).all() and not p.jittered.any()


def test_rotation_draws_one_crop_per_image() -> None:
    p = draw(np.random.default_rng(0), recipes.rotation(), 16, 32, 32)
    assert p.top.shape == (16, 1)


def test_draws_are_reproducible() -> None:
    a = draw(np.random.default_rng(5), recipes.relational(4), 8, 32, 32)
    b = draw(np.random.default_rng(5), recipes.relational(4), 8, 32, 32)
    for field in dataclasses.fields(a):
        np.testing.assert_array_equal(getattr(a, field.name), getattr(b, field.name))


@pytest.mark.parametrize("backend", ["pil", "tv2"])
def test_each_reference_backend_makes_normalised_views_of_the_recipe(backend: str, tmp_path: Path) -> None:
    from ssrr.pipelines.reference import ReferenceViews
    from ssrr.pipelines.synthetic import write_synthetic

    shards = write_synthetic(tmp_path, "ref", train=16, test=4, shard_size=16)
    views, labels = ReferenceViews(shards, "train", recipes.relational(6), backend=backend)[3]
    assert views.shape == (6, 3, 32, 32) and views.dtype == torch.float32 and labels.shape == (3,)
    assert not torch.equal(views[0], views[1])  # each view draws its own crop and jitter
    assert -4 < float(views.mean()) < 4 and float(views.std()) > 0.1  # normalised, not raw 0..255 or 0..1


def test_an_unknown_reference_backend_is_refused(tmp_path: Path) -> None:
    from ssrr.pipelines.reference import ReferenceViews

    from ssrr.errors import SsrrError

    with pytest.raises(SsrrError, match="backend"):
        ReferenceViews(tmp_path, "train", recipes.relational(2), backend="opencv")
