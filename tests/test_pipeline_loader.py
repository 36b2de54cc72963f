"""ViewLoader behaviour on small synthetic shards: layout, labels, ranks, epochs, determinism, dtypes."""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from ssrr.pipelines import recipes
from ssrr.pipelines.loader import Batch, ViewLoader
from ssrr.pipelines.shards import epoch_slice, rank_shares
from ssrr.pipelines.synthetic import write_synthetic

from ssrr.data.writer import iter_samples
from ssrr.errors import SsrrError

TRAIN, TEST = 203, 37  # odd sizes: uneven rank shares, partial last batches


@pytest.fixture(scope="module")
def pipe_smooth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(
        tmp_path_factory.mktemp("pipe"), "smooth", kind="smooth", train=TRAIN, test=TEST, shard_size=50
    )


@pytest.fixture(scope="module")
def pipe_labels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(
        tmp_path_factory.mktemp("pipe"), "labels", kind="label", train=64, test=TEST, coarse_classes=5, shard_size=16
    )


def _images(root: Path, split: str) -> dict[int, np.ndarray]:
    return {label[2]: image for _, image, label in iter_samples(root, split)}


def _to_uint8(loader: ViewLoader, views: torch.Tensor) -> np.ndarray:
    """Normalised (N, 3, H, W) views back to (N, H, W, 3) pixel values (float, unrounded)."""
    mean = torch.tensor(loader.manifest.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(loader.manifest.std).view(1, 3, 1, 1) * 255
    return (views.float().cpu() * std + mean).permute(0, 2, 3, 1).numpy()


def _indices(loader: ViewLoader, epoch: int) -> list[int]:
    out: list[int] = []
    for batch in loader.epoch(epoch):
        out += batch.index[batch.valid].tolist()
    return out


def test_batch_shapes_types_and_channels_last(pipe_smooth: Path) -> None:
    loader = ViewLoader(pipe_smooth, recipes.relational(4), batch_size=8)
    batch = next(iter(loader.epoch(0)))
    assert isinstance(batch, Batch)
    assert batch.views.shape == (32, 3, 32, 32) and batch.views.dtype == torch.float32
    assert batch.views.is_contiguous(memory_format=torch.channels_last)
    for field in (batch.fine, batch.coarse, batch.index):
        assert field.shape == (8,) and field.dtype == torch.int64
    assert batch.valid.dtype == torch.bool and batch.valid.all()
    assert (batch.coarse == -1).all() and ((batch.fine >= 0) & (batch.fine < 10)).all()
    assert batch.num_views == 4 and torch.equal(batch.view(1), batch.views[8:16])
    assert torch.isfinite(batch.views).all()


def test_view_major_layout_lines_up_with_labels(pipe_labels: Path) -> None:
    """Eval recipe with 3 copies: row v*M + m is image m exactly, and its colour encodes its labels."""
    images = _images(pipe_labels, "test")
    recipe = dataclasses.replace(recipes.evaluation(), views=3)
    loader = ViewLoader(pipe_labels, recipe, split="test", batch_size=8, training=False)
    seen = 0
    for batch in loader.epoch(0):
        pixels = np.rint(_to_uint8(loader, batch.views))
        m_count = len(batch.index)
        for m in range(m_count):
            if not batch.valid[m]:
                continue
            seen += 1
            expected = images[int(batch.index[m])]
            for v in range(3):
                np.testing.assert_array_equal(pixels[v * m_count + m], expected)
            assert expected[0, 0, 0] == batch.fine[m] * 20 + 10
            assert expected[0, 0, 1] == batch.coarse[m] * 20 + 10
    assert seen == TEST


def test_eval_sees_every_sample_once_and_pads(pipe_smooth: Path) -> None:
    loader = ViewLoader(pipe_smooth, recipes.evaluation(), split="test", batch_size=8, training=False)
    assert len(loader) == math.ceil(TEST / 8)
    batches = list(loader.epoch(0))
    assert len(batches) == len(loader)
    assert all(b.views.shape == (8, 3, 32, 32) for b in batches)
    valid = torch.cat([b.valid for b in batches])
    assert valid.sum() == TEST and valid[:TEST].all() and not valid[TEST:].any()
    assert sorted(_indices(loader, 0)) == list(range(TEST))
    assert _indices(loader, 0) == list(range(TEST))  # stored order


def test_two_ranks_cover_an_eval_epoch_exactly_once(pipe_smooth: Path) -> None:
    loaders = [
        ViewLoader(pipe_smooth, recipes.evaluation(), split="test", batch_size=5, training=False, rank=r, world_size=2)
        for r in range(2)
    ]
    assert len(loaders[0]) == len(loaders[1]) == math.ceil(max(rank_shares(TEST, 2)) / 5)
    seen = [_indices(loader, 0) for loader in loaders]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(TEST))
    assert [len(s) for s in seen] == rank_shares(TEST, 2) == [18, 19]


def test_training_ranks_disjoint_equal_length(pipe_smooth: Path) -> None:
    shares = rank_shares(TRAIN, 3)
    loaders = [ViewLoader(pipe_smooth, recipes.relational(2), batch_size=16, rank=r, world_size=3) for r in range(3)]
    assert {len(loader) for loader in loaders} == {min(shares) // 16}
    seen = [_indices(loader, 4) for loader in loaders]
    for r in range(3):
        assert len(seen[r]) == len(loaders[r]) * 16 and len(set(seen[r])) == len(seen[r])
        for s in range(r):
            assert not set(seen[r]) & set(seen[s])
    # DALI's contiguous split: slice s holds samples [s*N//W, (s+1)*N//W) of the stored order; in epoch e rank r
    # reads slice epoch_slice(r, W, e, seed)
    order = list(_images(pipe_smooth, "train"))
    for r in range(3):
        s = loaders[r].slice_of(4)
        assert s == epoch_slice(r, 3, 4, loaders[r].seed)
        assert set(seen[r]) <= set(order[s * TRAIN // 3 : (s + 1) * TRAIN // 3])


@pytest.mark.parametrize("world_size", [2, 3, 5, 8])
def test_epoch_slices_rotate_one_to_one_and_cover_the_split(world_size: int) -> None:
    for seed in range(4):
        table = [[epoch_slice(r, world_size, e, seed) for r in range(world_size)] for e in range(2 * world_size)]
        assert all(sorted(row) == list(range(world_size)) for row in table)  # each epoch: disjoint, all covered
        for r in range(world_size):
            walk = [table[e][r] for e in range(2 * world_size)]
            assert walk[0] == r  # epoch 0 as before: rank r reads slice r
            assert sorted(walk[:world_size]) == list(range(world_size))  # every slice over W epochs
            assert all(a != b for a, b in itertools.pairwise(walk))  # another slice each epoch
    assert epoch_slice(0, 1, 7, 3) == 0


def test_two_ranks_read_all_samples_over_two_epochs(pipe_labels: Path) -> None:
    # 64 samples, 2 ranks, M=16: each rank reads its whole 32-sample slice per epoch (nothing dropped)
    loaders = [ViewLoader(pipe_labels, recipes.relational(2), batch_size=16, rank=r, world_size=2) for r in range(2)]
    seen = [[set(_indices(loader, epoch)) for epoch in range(2)] for loader in loaders]
    for epoch in range(2):
        assert not seen[0][epoch] & seen[1][epoch]  # disjoint within an epoch
        assert seen[0][epoch] | seen[1][epoch] == set(range(64))
    for r in range(2):
        assert len(seen[r][0]) == len(seen[r][1]) == 32
        assert not seen[r][0] & seen[r][1]  # epoch 2 reads other samples than epoch 1
        assert seen[r][0] | seen[r][1] == set(range(64))  # over the two epochs, every rank saw the whole split


def test_new_order_each_epoch_and_exact_reproduction(pipe_smooth: Path) -> None:
    loader = ViewLoader(pipe_smooth, recipes.relational(2), batch_size=16, seed=3)
    first, second = _indices(loader, 0), _indices(loader, 1)
    assert first != second and len(first) == len(second) == len(loader) * 16
    again = ViewLoader(pipe_smooth, recipes.relational(2), batch_size=16, seed=3)
    a = next(iter(loader.epoch(1)))
    b = next(iter(again.epoch(1)))
    assert torch.equal(a.views, b.views) and torch.equal(a.index, b.index)
    other = next(iter(ViewLoader(pipe_smooth, recipes.relational(2), batch_size=16, seed=4).epoch(1)))
    assert not torch.equal(a.views, other.views)


def test_views_of_one_image_differ(pipe_smooth: Path) -> None:
    loader = ViewLoader(pipe_smooth, recipes.relational(4), batch_size=8)
    batch = next(iter(loader.epoch(0)))
    views = batch.views.view(4, 8, 3, 32, 32)
    for m in range(8):
        for v in range(4):
            for w in range(v):
                assert (views[v, m] - views[w, m]).abs().max() > 0.1


def test_steps_per_run_only_changes_speed_for_eval(pipe_smooth: Path) -> None:
    one = ViewLoader(pipe_smooth, recipes.evaluation(), split="test", batch_size=4, training=False, steps_per_run=1)
    three = ViewLoader(pipe_smooth, recipes.evaluation(), split="test", batch_size=4, training=False, steps_per_run=3)
    a, b = list(one.epoch(0)), list(three.epoch(0))
    assert len(a) == len(b) == len(one)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.valid, y.valid)
        assert torch.equal(x.index[x.valid], y.index[y.valid])
        assert torch.equal(x.views[x.valid], y.views[y.valid])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_dtypes(pipe_smooth: Path, dtype: torch.dtype) -> None:
    full = next(iter(ViewLoader(pipe_smooth, recipes.relational(2), batch_size=8).epoch(0)))
    half = next(iter(ViewLoader(pipe_smooth, recipes.relational(2), batch_size=8, dtype=dtype).epoch(0)))
    assert half.views.dtype == dtype and half.views.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(full.index, half.index)
    tolerance = 0.01 if dtype == torch.float16 else 0.04  # bf16: 8 mantissa bits on values up to ~2.2
    assert (half.views.float() - full.views).abs().max() <= tolerance


def test_rotation_views_are_rotations_of_view_zero(pipe_smooth: Path) -> None:
    loader = ViewLoader(pipe_smooth, recipes.rotation(), batch_size=8)
    batch = next(iter(loader.epoch(0)))
    views = batch.views.view(4, 8, 3, 32, 32)
    for r in range(1, 4):
        assert torch.equal(views[r], torch.rot90(views[0], r, dims=(-2, -1)))
    assert not torch.equal(views[1], views[0])


def test_crop_flip_is_a_shifted_flipped_copy(pipe_smooth: Path) -> None:
    """Every crop_flip view is the image shifted by at most 4 pixels (zero padding), maybe flipped."""
    images = _images(pipe_smooth, "train")
    loader = ViewLoader(pipe_smooth, recipes.crop_flip(), batch_size=8)
    batch = next(iter(loader.epoch(0)))
    pixels = np.rint(_to_uint8(loader, batch.views))
    shifts = set()
    for m in range(8):
        padded = np.pad(images[int(batch.index[m])], ((4, 4), (4, 4), (0, 0)))
        found = [
            (dy, dx, flip)
            for dy in range(9)
            for dx in range(9)
            for flip in (False, True)
            if np.array_equal(padded[dy : dy + 32, dx : dx + 32][:, :: -1 if flip else 1], pixels[m])
        ]
        assert found, f"view {m} is not a padded crop of its image"
        shifts.add(found[0][:2])
    assert len(shifts) > 1


def test_flip_is_the_image_or_its_mirror(pipe_smooth: Path) -> None:
    """Deep InfoMax's recipe: every view is its image unchanged or mirrored left-right, and both occur."""
    images = _images(pipe_smooth, "train")
    loader = ViewLoader(pipe_smooth, recipes.flip(), batch_size=16)
    batch = next(iter(loader.epoch(0)))
    pixels = np.rint(_to_uint8(loader, batch.views))
    mirrored = []
    for m in range(16):
        image = images[int(batch.index[m])]
        same, mirror = np.array_equal(image, pixels[m]), np.array_equal(image[:, ::-1], pixels[m])
        assert same or mirror, f"view {m} is neither its image nor the mirror"
        mirrored.append(mirror and not same)
    assert any(mirrored) and not all(mirrored)


def test_image_size_resizes(pipe_smooth: Path) -> None:
    """Domain transfer: eval views resized to 16x16 (bilinear, antialiased, like torchvision's Resize)."""
    from PIL import Image
    from torchvision.transforms import functional as F

    images = _images(pipe_smooth, "test")
    loader = ViewLoader(pipe_smooth, recipes.evaluation(), split="test", batch_size=8, training=False, image_size=16)
    batch = next(iter(loader.epoch(0)))
    assert batch.views.shape == (8, 3, 16, 16)
    got = _to_uint8(loader, batch.views)
    for m in range(8):
        ref = np.asarray(F.resize(Image.fromarray(images[int(batch.index[m])]), [16, 16], antialias=True), np.float64)
        assert np.abs(got[m] - ref).mean() < 2.0
    crops = next(iter(ViewLoader(pipe_smooth, recipes.relational(2), batch_size=8, image_size=(24, 20)).epoch(0)))
    assert crops.views.shape == (16, 3, 24, 20)


def test_set_image_size_changes_later_epochs(pipe_smooth: Path) -> None:
    """Progressive resizing: the output side can change between epochs, the clamp to the uint8 range with it."""
    loader = ViewLoader(pipe_smooth, recipes.relational(2), batch_size=8)
    assert next(iter(loader.epoch(0))).views.shape == (16, 3, 32, 32)
    loader.set_image_size(20)
    small = next(iter(loader.epoch(1))).views
    assert small.shape == (16, 3, 20, 20)
    pixels = _to_uint8(loader, small)
    assert pixels.min() > -1e-3 and pixels.max() < 255 + 1e-3 and pixels.std() > 0
    with pytest.raises(SsrrError, match="image_size must be positive"):
        loader.set_image_size(0)


def test_length_formulas(pipe_smooth: Path) -> None:
    for world in (1, 2, 3, 4):
        shares = rank_shares(TRAIN, world)
        assert sum(shares) == TRAIN and max(shares) - min(shares) <= 1
        train = ViewLoader(pipe_smooth, recipes.relational(2), batch_size=10, world_size=world, rank=world - 1)
        assert len(train) == min(shares) // 10
        evaluate = ViewLoader(pipe_smooth, recipes.evaluation(), batch_size=10, world_size=world, training=False)
        assert len(evaluate) == math.ceil(max(shares) / 10)


def test_argument_errors(pipe_smooth: Path) -> None:
    with pytest.raises(SsrrError, match="rank"):
        ViewLoader(pipe_smooth, recipes.evaluation(), rank=2, world_size=2)
    with pytest.raises(SsrrError, match="no split 'val'"):
        ViewLoader(pipe_smooth, recipes.evaluation(), split="val")
    with pytest.raises(SsrrError, match="dtype"):
        ViewLoader(pipe_smooth, recipes.evaluation(), dtype=torch.int8)
    with pytest.raises(SsrrError, match="fewer than one batch"):
        ViewLoader(pipe_smooth, recipes.relational(2), split="test", batch_size=64)
    with pytest.raises(SsrrError, match="not an ssrr shard folder"):
        ViewLoader(pipe_smooth / "nothing", recipes.evaluation())


@pytest.mark.gpu
def test_gpu_loader_matches_cpu(pipe_smooth: Path) -> None:
    """device="cuda": views stay on the GPU, and match the CPU loader's run with the same (GPU) contrast form on
    the same draws (GPU and CPU resampling differ by a few uint8 levels at most)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    recipe = recipes.relational(4)
    gpu = ViewLoader(pipe_smooth, recipe, batch_size=8, device="cuda", steps_per_run=2)
    cpu = ViewLoader(pipe_smooth, recipe, batch_size=8, steps_per_run=2)
    assert gpu.spec(0).contrast == "arith"
    cpu.contrast = "arith"
    for g, c in zip(gpu.epoch(0), cpu.epoch(0), strict=True):
        assert g.views.is_cuda and g.index.is_cuda and g.valid.is_cuda
        assert g.views.shape == c.views.shape and g.views.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(g.index.cpu(), c.index)
        diff = (_to_uint8(gpu, g.views) - _to_uint8(cpu, c.views)).__abs__()
        assert np.mean(diff) < 1.0 and np.percentile(diff, 99) < 6
    half = next(iter(ViewLoader(pipe_smooth, recipe, batch_size=8, device="cuda", dtype=torch.float16).epoch(0)))
    assert half.views.dtype == torch.float16 and half.views.is_cuda


@pytest.mark.gpu
@pytest.mark.parametrize("make", [recipes.evaluation, recipes.crop_flip, recipes.flip, recipes.rotation])
def test_gpu_geometric_recipes_match_cpu(pipe_smooth: Path, make) -> None:
    """Recipes without colour are exact on the GPU too (same draws, same integer crops, same normalisation)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    recipe = make()
    gpu = next(iter(ViewLoader(pipe_smooth, recipe, batch_size=8, device="cuda").epoch(0)))
    cpu = next(iter(ViewLoader(pipe_smooth, recipe, batch_size=8).epoch(0)))
    assert gpu.views.is_cuda and torch.equal(gpu.index.cpu(), cpu.index)
    assert (gpu.views.cpu() - cpu.views).abs().max() < 1e-4


def test_train_plus_unlabeled_reads_both_with_unique_indices(with_unlabeled: Path) -> None:
    """STL-10's pretraining set: every sample of both splits once; the unlabelled ones numbered after train."""
    train_fine = {}
    loader = ViewLoader(with_unlabeled, recipes.evaluation(), split="train", batch_size=16, training=False)
    for batch in loader.epoch(0):
        train_fine.update(zip(batch.index[batch.valid].tolist(), batch.fine[batch.valid].tolist(), strict=True))
    for order in ("train+unlabeled", "unlabeled+train"):
        loader = ViewLoader(with_unlabeled, recipes.evaluation(), split=order, batch_size=16, training=False)
        seen: dict[int, int] = {}
        for batch in loader.epoch(0):
            seen.update(zip(batch.index[batch.valid].tolist(), batch.fine[batch.valid].tolist(), strict=True))
        assert sorted(seen) == list(range(100)), order
        first = 40 if order.startswith("train") else 60
        labelled = {i for i, fine in seen.items() if fine >= 0}
        assert labelled == (set(range(40)) if first == 40 else set(range(60, 100)))
        shift = 0 if first == 40 else 60
        assert {i - shift: seen[i] for i in labelled} == train_fine
    training = ViewLoader(with_unlabeled, recipes.flip(), split="train+unlabeled", batch_size=16)
    indices = torch.cat([batch.index for batch in training.epoch(3)]).tolist()
    assert len(training) == 6 and len(indices) == len(set(indices)) == 96 and max(indices) < 100


def test_combined_splits_are_labelled_ones_and_at_most_one_unlabelled(with_unlabeled: Path) -> None:
    for split, message in (
        ("train+nope", "no split 'nope'"),
        ("train+train", "at most one unlabelled"),
        ("unlabeled+partly", "at most one unlabelled"),
        ("train+unlabeled+partly", "at most one unlabelled"),
    ):
        with pytest.raises(SsrrError, match=message):
            ViewLoader(with_unlabeled, recipes.evaluation(), split=split, batch_size=4)
    # read beside a labelled split, a split's labelled samples would collide: they are corrupt there
    with pytest.raises(SsrrError, match="a labelled sample in 'partly'"):
        ViewLoader(with_unlabeled, recipes.evaluation(), split="train+partly", batch_size=4)
    loader = ViewLoader(with_unlabeled, recipes.evaluation(), split="train+partly", batch_size=4, skip_corrupt=True)
    assert loader.skipped == 5
