"""Shared fixtures: small shard folders written with the real writer."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from ssrr.data.writer import DatasetArrays, SplitArrays, write_dataset

# Files whose tests depend on the CPU's arithmetic (kernel choice, bf16): marked `numerics`, which CI also runs
# under the avx2, generic and bf16 personalities of scripts/test_cpus.py (README, Tests).
NUMERICS_FILES = frozenset(
    {
        "test_backbones.py",
        "test_batchnorm.py",
        "test_cluster.py",
        "test_curves.py",
        "test_eval_finetune.py",
        "test_eval_knn.py",
        "test_eval_linear.py",
        "test_eval_retrieval.py",
        "test_eval_semi.py",
        "test_eval_tsne.py",
        "test_fidelity.py",
        "test_heads.py",
        "test_losses.py",
        "test_methods.py",
        "test_official.py",
        "test_relational.py",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests of NUMERICS_FILES `numerics`."""
    for item in items:
        if item.path.name in NUMERICS_FILES:
            item.add_marker(pytest.mark.numerics)


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """ssrr's cache (downloads, thread plans) in the session's temporary folder, never the user's."""
    if "SSRR_CACHE" not in os.environ:
        monkeypatch.setenv("SSRR_CACHE", str(tmp_path_factory.getbasetemp() / "ssrr-cache"))


def make_shards(
    out: Path,
    name: str = "tiny",
    train: int = 256,
    test: int = 64,
    classes: int = 4,
    size: int = 32,
    seed: int = 0,
    shard_size: int = 100,
) -> Path:
    """A dataset whose class is the dominant colour channel pattern (learnable, cheap), written as shards."""
    rng = np.random.default_rng(seed)

    def split(n: int) -> SplitArrays:
        labels = rng.integers(0, classes, n)
        images = rng.integers(0, 96, (n, size, size, 3), dtype=np.uint8)
        for c in range(classes):
            images[labels == c, :, :, c % 3] += np.uint8(120 + 30 * (c // 3))
        return SplitArrays(images, labels, np.full(n, -1))

    dataset = DatasetArrays(
        name,
        {"train": split(train), "test": split(test)},
        [f"c{i}" for i in range(classes)],
        [],
        {"generator": "tests"},
    )
    write_dataset(dataset, out, seed=seed, shard_size=shard_size)
    return out / name


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """256 train / 64 test images of 32x32 in 4 classes, 3 train shards."""
    return make_shards(tmp_path_factory.mktemp("shards"))


@pytest.fixture(scope="session")
def with_unlabeled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train (40, labelled), unlabeled (60, no labels), partly (10, half labelled): STL-10's layout in small."""
    rng = np.random.default_rng(0)

    def images(n: int) -> np.ndarray:
        return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)

    half = np.where(np.arange(10) % 2 == 0, 3, -1)
    splits = {
        "train": SplitArrays(images(40), rng.integers(0, 5, 40), np.full(40, -1)),
        "unlabeled": SplitArrays.unlabeled(images(60)),
        "partly": SplitArrays(images(10), half, np.full(10, -1)),
    }
    out = tmp_path_factory.mktemp("unlabeled")
    write_dataset(DatasetArrays("mixed", splits, [f"c{i}" for i in range(5)], [], {"path": "test"}), out, shard_size=16)
    return out / "mixed"
