"""CIFAR-10 and CIFAR-100 from the official python archives (or their extracted folders).

``cifar-10-python.tar.gz`` holds ``cifar-10-batches-py/data_batch_1..5``, ``test_batch`` and ``batches.meta``
(``label_names``); ``cifar-100-python.tar.gz`` holds ``cifar-100-python/train``, ``test`` and ``meta``
(``fine_label_names``, ``coarse_label_names``). Each batch is a Python 2 pickle of a dict with bytes keys:
``b'data'`` is an (N, 3072) uint8 array, each row a 32x32 image stored channel-planar (R plane, G plane,
B plane), and ``b'labels'`` (CIFAR-10) or ``b'fine_labels'`` and ``b'coarse_labels'`` (CIFAR-100) are lists
of ints. Members are read straight out of the archive and unpickled only through
`ssrr.data.safety.load_pickle` (numpy arrays and plain containers, nothing else).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ssrr.data import formats
from ssrr.data.safety import load_pickle, open_members
from ssrr.data.sources.base import ProgressFactory, no_progress
from ssrr.data.writer import SplitArrays
from ssrr.errors import SsrrError

SIDE = 32

CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_FILES = {**{name: "train" for name in CIFAR10_TRAIN}, "test_batch": "test", "batches.meta": "meta"}
CIFAR100_FILES = {"train": "train", "test": "test", "meta": "meta"}


def _text_keys(obj: Any, origin: str, what: str) -> dict[str, Any]:
    """A pickled dict with its keys as str (Python 2 pickles give bytes keys)."""
    if not isinstance(obj, dict):
        raise SsrrError(f"{origin}: not a CIFAR {what} (a {type(obj).__name__}, not a dict)")
    return {k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _names(value: Any, origin: str, key: str) -> list[str]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, bytes | str) for v in value):
        raise SsrrError(f"{origin}: '{key}' is not a list of names")
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value]


def _labels(batch: dict[str, Any], key: str, count: int, classes: int, origin: str) -> np.ndarray:
    if key not in batch:
        raise SsrrError(f"{origin}: not a CIFAR batch (no '{key}')")
    try:
        labels = np.asarray(batch[key], dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise SsrrError(f"{origin}: '{key}' is not a list of integers") from None
    if labels.shape != (count,):
        raise SsrrError(f"{origin}: '{key}' has {labels.size} entries for {count} images")
    if count and (labels.min() < 0 or labels.max() >= classes):
        raise SsrrError(f"{origin}: '{key}' has values outside 0..{classes - 1}")
    return labels


def _images(batch: dict[str, Any], origin: str) -> np.ndarray:
    data = batch.get("data")
    if data is None:
        raise SsrrError(f"{origin}: not a CIFAR batch (no 'data')")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * SIDE**2:
        shape = getattr(data, "shape", None)
        raise SsrrError(f"{origin}: 'data' is not an (N, 3072) uint8 array (got {type(data).__name__} {shape})")
    # rows are R, G, B planes of 32x32: to (N, 32, 32, 3)
    return np.ascontiguousarray(data.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1))


def _read_pickles(path: Path, wanted: dict[str, str], label: str, progress: ProgressFactory) -> dict[str, Any]:
    """Unpickle the wanted members (by file name, at any depth) of an archive or folder."""
    found: dict[str, Any] = {}
    tick = progress(f"reading {path.name}", len(wanted))
    with open_members(path) as members:
        for member in members:
            base = member.name.rsplit("/", 1)[-1]
            if base not in wanted:
                continue
            if base in found:
                raise SsrrError(f"{path}: two members named {base} (second: {member.name})")
            origin = f"{path}: {member.name}"
            found[base] = (_text_keys(load_pickle(member.read(), origin), origin, wanted[base]), origin)
            tick(1)
    missing = [name for name in wanted if name not in found]
    if missing:
        raise SsrrError(f"{path}: not a {label} python archive (missing {', '.join(missing)})")
    return found


def load_cifar10(
    path: Path, progress: ProgressFactory = no_progress
) -> tuple[dict[str, SplitArrays], list[str], list[str]]:
    """CIFAR-10 splits (train 50,000 / test 10,000 in the official archive) and its class names."""
    found = _read_pickles(path, CIFAR10_FILES, "CIFAR-10", progress)
    meta, meta_origin = found["batches.meta"]
    if "label_names" not in meta:
        raise SsrrError(f"{meta_origin}: not a CIFAR-10 meta file (no 'label_names')")
    classes = _names(meta["label_names"], meta_origin, "label_names")
    splits: dict[str, SplitArrays] = {}
    for split, names in (("train", CIFAR10_TRAIN), ("test", ("test_batch",))):
        images, fine = [], []
        for name in names:
            batch, origin = found[name]
            images.append(_images(batch, origin))
            fine.append(_labels(batch, "labels", len(images[-1]), len(classes), origin))
        labels = np.concatenate(fine)
        splits[split] = SplitArrays(
            np.concatenate(images), labels, np.full(len(labels), formats.NO_LABEL, dtype=np.int64)
        )
    return splits, classes, []


def load_cifar100(
    path: Path, progress: ProgressFactory = no_progress
) -> tuple[dict[str, SplitArrays], list[str], list[str]]:
    """CIFAR-100 splits (train 50,000 / test 10,000) with fine (100) and coarse (20) labels and names."""
    found = _read_pickles(path, CIFAR100_FILES, "CIFAR-100", progress)
    meta, meta_origin = found["meta"]
    for key in ("fine_label_names", "coarse_label_names"):
        if key not in meta:
            raise SsrrError(f"{meta_origin}: not a CIFAR-100 meta file (no '{key}')")
    classes = _names(meta["fine_label_names"], meta_origin, "fine_label_names")
    coarse_classes = _names(meta["coarse_label_names"], meta_origin, "coarse_label_names")
    splits: dict[str, SplitArrays] = {}
    for split in ("train", "test"):
        batch, origin = found[split]
        images = _images(batch, origin)
        fine = _labels(batch, "fine_labels", len(images), len(classes), origin)
        coarse = _labels(batch, "coarse_labels", len(images), len(coarse_classes), origin)
        splits[split] = SplitArrays(images, fine, coarse)
    return splits, classes, coarse_classes
