"""Small synthetic shard folders for tests and benchmarks (written with :func:`ssrr.data.writer.write_dataset`).

Kinds of images:

- ``"smooth"``: random low-frequency colour fields with some texture, roughly natural-image statistics;
- ``"label"``: a constant colour that encodes the labels and the image, (fine * 20 + 10, coarse * 20 + 10,
  position % 256) where position is the image's place before the writer's shuffle;
- ``"coords"``: R = 8 * x, G = 8 * y (with a 32-pixel side), B a checkerboard: a crop's window can be read
  back from the view's pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ssrr.data import formats
from ssrr.data.writer import DatasetArrays, SplitArrays, write_dataset

KINDS = ("smooth", "label", "coords")


def synthetic_images(
    kind: str, count: int, size: int, rng: np.random.Generator, fine: np.ndarray, coarse: np.ndarray
) -> np.ndarray:
    """(count, size, size, 3) uint8 images of ``kind`` (the labels matter for ``"label"`` only)."""
    if kind == "smooth":
        grid = rng.uniform(0, 255, (count, 5, 5, 3))
        u = np.linspace(0, 4, size)
        i0 = np.clip(np.floor(u).astype(int), 0, 3)
        t = u - i0
        rows = grid[:, i0] * (1 - t)[None, :, None, None] + grid[:, i0 + 1] * t[None, :, None, None]
        field = rows[:, :, i0] * (1 - t)[None, None, :, None] + rows[:, :, i0 + 1] * t[None, None, :, None]
        noise = rng.normal(0, 12, (count, size, size, 3))
        return np.clip(field + noise, 0, 255).astype(np.uint8)
    if kind == "label":
        index = np.arange(count)
        colour = np.stack([fine * 20 + 10, coarse * 20 + 10, index % 256], axis=1)
        return np.broadcast_to(
            np.clip(colour, 0, 255).astype(np.uint8)[:, None, None, :], (count, size, size, 3)
        ).copy()
    if kind == "coords":
        y, x = np.mgrid[0:size, 0:size]
        scale = 256 // size
        image = np.stack([x * scale, y * scale, ((x + y) % 2) * 255], axis=-1).astype(np.uint8)
        return np.broadcast_to(image, (count, size, size, 3)).copy()
    raise ValueError(f"unknown synthetic kind {kind!r} (known: {', '.join(KINDS)})")


def write_synthetic(
    out: Path | str,
    name: str = "synthetic",
    *,
    kind: str = "smooth",
    train: int = 256,
    test: int = 64,
    size: int = 32,
    classes: int = 10,
    coarse_classes: int = 0,
    seed: int = 0,
    shard_size: int = 100,
    encoding: str = "raw",
    quality: int | None = None,
) -> Path:
    """Write ``<out>/<name>/`` with train/test splits of synthetic images (stored in `encoding`); return the folder."""
    rng = np.random.default_rng(seed)
    splits = {}
    for split, count in (("train", train), ("test", test)):
        if count <= 0:
            continue
        fine = rng.integers(0, classes, count)
        coarse = rng.integers(0, coarse_classes, count) if coarse_classes else np.full(count, formats.NO_LABEL)
        images = synthetic_images(kind, count, size, rng, fine, np.maximum(coarse, 0))
        splits[split] = SplitArrays(images, fine, coarse)
    dataset = DatasetArrays(
        name=name,
        splits=splits,
        classes=[f"class{i}" for i in range(classes)],
        coarse_classes=[f"super{i}" for i in range(coarse_classes)],
        source={"path": f"synthetic:{kind}"},
    )
    write_dataset(dataset, out, seed=seed, shard_size=shard_size, encoding=encoding, quality=quality)
    return Path(out) / name
