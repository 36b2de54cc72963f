"""A validation split carved out of train at sharding time (`ssrr shard ... --val N`).

Settings are chosen on a validation split and reported once on the held-out test split; CIFAR and STL-10 have no
validation split of their own, so `carve_validation` takes N images out of train, class-balanced and seeded, into a
split of their own (``val``, or ``minival`` where the source already has a ``val``). The images are written once:
train keeps the rest. Its samples are numbered after train's (train 0..T-1, val T..T+N-1), so ``train+val`` is the
whole original train split with every sample index unique (DeepCluster assigns clusters by sample index).

The carving is a function of (the source's train labels, N, seed) alone: a numpy Generator seeded with `seed`
picks each class's share in class order, so every run on every machine carves the same images. Which ones is
recorded beside the shards (`INDICES_FILE`: the positions in the source's train split, as its reader returns it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import numpy as np

from ssrr.data.writer import DatasetArrays, SplitArrays
from ssrr.errors import SsrrError

SPLIT = "val"
ALTERNATE = "minival"  # the carved split's name where the source already has a `val` (tiny-ImageNet's reported one)
INDICES_FILE = "validation-indices.json"


@dataclass(frozen=True)
class Carve:
    """What was carved: into which split, from train, how many, with which seed, and the source positions."""

    split: str
    samples: int
    seed: int
    indices: np.ndarray  # sorted positions in the source's train split

    def record(self) -> dict[str, object]:
        """The manifest's `validation_carve` entry (the indices themselves go to `INDICES_FILE`)."""
        return {"from": "train", "samples": self.samples, "seed": self.seed, "indices_file": INDICES_FILE}

    def indices_json(self) -> str:
        return json.dumps({"split": self.split, "from": "train", "seed": self.seed, "indices": self.indices.tolist()})


def class_quotas(counts: np.ndarray, total: int) -> np.ndarray:
    """How many of each class's `counts` images go to a validation set of `total`: proportional to the class
    sizes (equal for balanced data), the remainders to the largest fractional parts, ties to the lower class."""
    exact = counts * total / counts.sum()
    quotas = np.floor(exact).astype(np.int64)
    short = total - int(quotas.sum())
    order = np.lexsort((np.arange(len(counts)), -(exact - quotas)))
    quotas[order[:short]] += 1
    return np.minimum(quotas, counts)


def choose_indices(fine: np.ndarray, total: int, seed: int) -> np.ndarray:
    """Sorted positions of a class-balanced, seeded choice of `total` labelled samples (classes in label order,
    each class drawn without replacement by one Generator seeded with `seed`)."""
    classes, counts = np.unique(fine, return_counts=True)
    quotas = class_quotas(counts, total)
    rng = np.random.default_rng([seed, 0x7A1])
    chosen = [
        rng.choice(np.flatnonzero(fine == c), size=int(q), replace=False) for c, q in zip(classes, quotas, strict=True)
    ]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def _take(split: SplitArrays, rows: np.ndarray) -> SplitArrays:
    originals = [split.originals[int(i)] for i in rows] if split.originals is not None else None
    return SplitArrays(split.images[rows], split.fine[rows], split.coarse[rows], originals, split.source_formats)


def carve_validation(dataset: DatasetArrays, samples: int, seed: int = 0) -> tuple[DatasetArrays, Carve]:
    """`dataset` with `samples` train images moved into a validation split of their own, and what was carved."""
    train = dataset.splits.get("train")
    if train is None or not train.labeled:
        raise SsrrError(f"{dataset.name}: --val carves from a labelled train split, which this dataset lacks")
    if dataset.validation_split is not None:
        raise SsrrError(
            f"{dataset.name}: already has a validation split '{dataset.validation_split}'; drop --val to use it"
        )
    if seed < 0:
        raise SsrrError(f"--val-seed must be at least 0, got {seed}")
    classes = len(np.unique(train.fine))
    if not classes <= samples < len(train.fine) - classes + 1:
        raise SsrrError(
            f"--val {samples}: give at least one image per class ({classes}) and leave as many in train "
            f"(train has {len(train.fine)})"
        )
    name = ALTERNATE if SPLIT in dataset.splits else SPLIT
    chosen = choose_indices(train.fine, samples, seed)
    keep = np.setdiff1d(np.arange(len(train.fine)), chosen)
    splits = {**dataset.splits, "train": _take(train, keep), name: _take(train, chosen)}
    carve = Carve(name, samples, seed, chosen)
    carved = replace(
        dataset,
        splits=splits,
        validation_split=name,
        first_index={name: len(keep)},
        validation_carve=carve.record(),
        side_files={INDICES_FILE: carve.indices_json()},
    )
    return carved, carve
