"""Every dataset parser on small archives in the real formats, end to end into shards."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from fixtures_data import (
    encode,
    make_cifar10,
    make_cifar100,
    make_imagefolder,
    make_stl10,
    make_tiny_imagenet,
    shard_samples,
    tar_tree,
    zip_tree,
)
from PIL import Image

from ssrr.data import formats
from ssrr.data.sources import base, load_dataset, stl10, synthetic
from ssrr.data.sources.cifar import load_cifar10, load_cifar100
from ssrr.data.sources.imagefolder import load_imagefolder
from ssrr.data.sources.tiny_imagenet import load_tiny_imagenet
from ssrr.data.writer import write_dataset
from ssrr.errors import SsrrError


def _split_samples(arrays, split):  # type: ignore[no-untyped-def]
    s = arrays[split]
    return sorted((image.tobytes(), int(f), int(c)) for image, f, c in zip(s.images, s.fine, s.coarse, strict=True))


def test_cifar10_parser(tmp_path: Path) -> None:
    path, expected = make_cifar10(tmp_path)
    splits, classes, coarse = load_cifar10(path)
    assert classes == expected.classes and coarse == []
    assert set(splits) == {"train", "test"}
    for split in splits:
        assert splits[split].images.shape == (len(expected.fine[split]), 32, 32, 3)
        # pixel-exact, in archive order
        np.testing.assert_array_equal(splits[split].images, expected.images[split])
        np.testing.assert_array_equal(splits[split].fine, expected.fine[split])
        assert (splits[split].coarse == -1).all()


def test_cifar100_parser_fine_and_coarse(tmp_path: Path) -> None:
    path, expected = make_cifar100(tmp_path)
    splits, classes, coarse = load_cifar100(path)
    assert classes == expected.classes and coarse == expected.coarse_classes
    for split in ("train", "test"):
        np.testing.assert_array_equal(splits[split].images, expected.images[split])
        np.testing.assert_array_equal(splits[split].fine, expected.fine[split])
        np.testing.assert_array_equal(splits[split].coarse, expected.coarse[split])


def test_cifar_from_extracted_folder(tmp_path: Path) -> None:
    import tarfile

    path, expected = make_cifar10(tmp_path)
    with tarfile.open(path) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    splits, _, _ = load_cifar10(tmp_path / "x" / "cifar-10-batches-py")
    np.testing.assert_array_equal(splits["train"].images, expected.images["train"])


def test_stl10_parser_column_major_and_streamed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stl10, "CHUNK_IMAGES", 4)  # several chunks per member, with a short last one
    path, expected = make_stl10(tmp_path)
    splits, classes, _ = stl10.load_stl10(path)
    assert classes == expected.classes
    assert set(splits) == {"train", "test", "unlabeled"}
    for split in splits:
        np.testing.assert_array_equal(splits[split].images, expected.images[split])
        np.testing.assert_array_equal(splits[split].fine, expected.fine[split])
    assert not splits["unlabeled"].labeled and splits["train"].labeled


def test_stl10_layout_is_column_major(tmp_path: Path) -> None:
    # an image whose left half is white: column-major storage must not turn it into a top half
    image = np.zeros((1, 96, 96, 3), np.uint8)
    image[:, :, :48] = 255
    raw = np.ascontiguousarray(image.transpose(0, 3, 2, 1)).tobytes()
    decoded = np.frombuffer(raw, np.uint8).reshape(1, 3, 96, 96).transpose(0, 3, 2, 1)
    np.testing.assert_array_equal(decoded, image)
    assert raw[:48] == b"\xff" * 48  # first column (x = 0), all rows: white


@pytest.mark.parametrize("packed", [False, True])
def test_tiny_imagenet_parser(tmp_path: Path, packed: bool) -> None:
    root, expected = make_tiny_imagenet(tmp_path)
    source = zip_tree(root, tmp_path / "tiny.zip") if packed else root
    splits, classes, _ = load_tiny_imagenet(source, workers=1)
    assert classes == ["goldfish", "Egyptian cat", "cliff"]  # wnids sorted, first name from words.txt
    assert set(splits) == {"train", "val", "test"}
    for split in splits:
        assert _split_samples(splits, split) == expected.samples(split)
    assert not splits["test"].labeled and splits["val"].labeled
    gray = splits["train"].images  # the grayscale JPEG became 3 equal channels
    assert any((img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all() for img in gray)


@pytest.mark.parametrize("packed", [False, True])
def test_imagefolder_parser(tmp_path: Path, packed: bool) -> None:
    root, expected = make_imagefolder(tmp_path)
    source = tar_tree(root, tmp_path / "pets.tar.gz") if packed else root
    splits, classes, _ = load_imagefolder(source, workers=1)
    assert classes == ["bird", "cat", "dog"]
    for split in ("train", "test"):
        assert splits[split].images.shape[1:] == (16, 16, 3)
        assert _split_samples(splits, split) == expected.samples(split)


def test_imagefolder_explicit_size(tmp_path: Path) -> None:
    root, _ = make_imagefolder(tmp_path)
    splits, _, _ = load_imagefolder(root, size=8, workers=1)
    assert splits["train"].images.shape[1:] == (8, 8, 3)


def test_imagefolder_mode_of_train_sizes(tmp_path: Path) -> None:
    # train: two 12x10 images, one 30x30 -> SIZE 10; the 30x30 is shrunk and centre-cropped
    root = tmp_path / "set"
    for i, shape in enumerate([(12, 10), (12, 10), (30, 30)]):
        (root / "train" / "a").mkdir(parents=True, exist_ok=True)
        pixels = np.random.default_rng(i).integers(0, 256, (*shape, 3), dtype=np.uint8)
        (root / "train" / "a" / f"{i}.png").write_bytes(encode(pixels, "PNG"))
    splits, _, _ = load_imagefolder(root, workers=1)
    assert splits["train"].images.shape == (3, 10, 10, 3)


def test_resize_policy_shorter_side_then_centre_crop() -> None:
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, 10:30] = 255  # a white band in the middle 20 columns
    out = base.to_square(Image.fromarray(pixels), 10)
    assert out.shape == (10, 10, 3)
    assert (out[:, 1:-1] == 255).all()  # the central crop is the white band (edges blend)
    assert base.to_square(Image.fromarray(pixels[:, :20]), 20).tobytes() == pixels[:, :20].tobytes()


def test_probe_size_matches_pillow() -> None:
    rng = np.random.default_rng(0)
    for fmt in ("PNG", "JPEG"):
        for shape in [(7, 13), (64, 64), (300, 200)]:
            data = encode(rng.integers(0, 256, (*shape, 3), dtype=np.uint8), fmt)
            assert base.probe_size(data) == (shape[1], shape[0])
    progressive = encode(rng.integers(0, 256, (33, 17, 3), dtype=np.uint8), "JPEG", progressive=True)
    assert base.probe_size(progressive) == (17, 33)
    assert base.probe_size(b"GIF89a....") is None


def test_pool_decoding_matches_in_process(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    blobs = [encode(rng.integers(0, 256, (12, 12 + i % 3, 3), dtype=np.uint8), "PNG") for i in range(40)]
    results = []
    for workers, min_parallel in ((1, 10**9), (2, 8)):
        with base.ImageDecoder(size=None, origin="t", workers=workers, min_parallel=min_parallel) as decoder:
            for i, data in enumerate(blobs):
                decoder.add(f"x{i}", data)
            arrays, size = decoder.result({"train": [f"x{i}" for i in range(40)]})
        results.append(arrays["train"])
        assert size == 12
    np.testing.assert_array_equal(results[0], results[1])


def test_pool_decoding_wrong_guess_is_redone() -> None:
    # the first image is 20x20 (guess 20) but most train images are 10x10: everything is decoded at 10
    rng = np.random.default_rng(6)
    shapes = [(20, 20)] + [(10, 10)] * 30
    blobs = [encode(rng.integers(0, 256, (*s, 3), dtype=np.uint8), "PNG") for s in shapes]
    with base.ImageDecoder(size=None, origin="t", workers=2, min_parallel=4) as decoder:
        for i, data in enumerate(blobs):
            decoder.add(f"x{i}", data)
        arrays, size = decoder.result({"train": [f"x{i}" for i in range(len(blobs))]})
    assert size == 10 and arrays["train"].shape == (31, 10, 10, 3)
    for i in range(1, len(blobs)):
        assert arrays["train"][i].tobytes() == Image.open(__import__("io").BytesIO(blobs[i])).tobytes()


def test_undecodable_image_names_the_file(tmp_path: Path) -> None:
    root = tmp_path / "bad"
    (root / "train" / "a").mkdir(parents=True)
    (root / "train" / "a" / "ok.png").write_bytes(encode(np.zeros((4, 4, 3), np.uint8), "PNG"))
    (root / "train" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
    with pytest.raises(SsrrError, match=r"train/a/broken\.png"):
        load_imagefolder(root, workers=1)


def test_imagefolder_bad_layout(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    (root / "cat").mkdir(parents=True)
    (root / "cat" / "a.png").write_bytes(encode(np.zeros((4, 4, 3), np.uint8), "PNG"))
    with pytest.raises(SsrrError, match="not laid out as"):
        load_imagefolder(root, workers=1)


def test_synthetic_deterministic_balanced_fast() -> None:
    started = time.perf_counter()
    splits, classes, coarse = synthetic.generate(seed=7)
    assert time.perf_counter() - started < 5
    assert len(classes) == 10 and coarse == []
    assert splits["train"].images.shape == (5000, 32, 32, 3) and splits["test"].images.shape == (1000, 32, 32, 3)
    assert np.bincount(splits["train"].fine).tolist() == [500] * 10
    again, _, _ = synthetic.generate(seed=7, train_per_class=500, test_per_class=100)
    np.testing.assert_array_equal(again["train"].images, splits["train"].images)
    other, _, _ = synthetic.generate(seed=8, train_per_class=5, test_per_class=1)
    assert other["train"].images.shape == (50, 32, 32, 3)
    # colour alone does not give the class away: per-class mean colours are all close to the overall mean
    means = np.stack([splits["train"].images[splits["train"].fine == c].mean((0, 1, 2)) for c in range(10)])
    assert np.abs(means - means.mean(0)).max() < 20


def test_synthetic_two_tone_colours() -> None:
    """One light and one dark grey per image (85+ levels apart in every channel, one shared small tint),
    light-on-dark and dark-on-light equally often: an image's colours say little about which image it is."""
    fg, bg = synthetic._colours(np.random.default_rng(0), 4000)
    gap = fg - bg
    np.testing.assert_allclose(gap, gap[:, :1].repeat(3, 1))  # the tint is shared, nothing clipped
    assert (np.abs(gap) >= synthetic.LIGHT[0] - synthetic.DARK[1]).all()
    assert 0.45 < (gap > 0).mean() < 0.55
    assert np.ptp(fg, axis=1).max() <= 2 * synthetic.TINT and np.ptp(bg, axis=1).max() <= 2 * synthetic.TINT


@pytest.mark.parametrize(
    "dataset,maker",
    [("cifar10", make_cifar10), ("cifar100", make_cifar100), ("stl10", make_stl10)],
)
def test_every_sample_in_exactly_one_shard(tmp_path: Path, dataset: str, maker) -> None:  # type: ignore[no-untyped-def]
    path, expected = maker(tmp_path)
    arrays = load_dataset(dataset, source=path)
    assert arrays.source["path"] == str(path.resolve()) and len(arrays.source["sha256"]) == 64
    manifest = write_dataset(arrays, tmp_path / "shards", seed=1, shard_size=7)
    root = tmp_path / "shards" / dataset
    assert manifest.classes == expected.classes and manifest.coarse_classes == expected.coarse_classes
    for split in expected.images:
        info = manifest.splits[split]
        assert info.samples == len(expected.fine[split])
        assert len(info.shards) == -(-info.samples // 7)
        assert shard_samples(root, split) == expected.samples(split)  # lossless: pixel-exact
    assert formats.load_manifest(root).image_size == expected.images["train"].shape[1:3]
