"""tiny-ImageNet (200 classes, 64x64) from the official ``tiny-imagenet-200.zip`` or its extracted folder.

Layout (under ``tiny-imagenet-200/``): ``wnids.txt`` (the 200 WordNet ids), ``words.txt``
(``wnid<TAB>name, other names``; a class's name is the first one), ``train/<wnid>/images/*.JPEG``
(500 per class), ``val/images/*.JPEG`` labelled by ``val/val_annotations.txt``
(``file<TAB>wnid<TAB>bounding box``), and ``test/images/*.JPEG`` without labels.
Splits: ``train``, ``val`` (labelled) and ``test`` (unlabeled). Classes are the wnids in sorted order,
named from ``words.txt``. Some images are grayscale and become RGB; the resize policy is the one in
`ssrr.data.sources.base` (all official images are already 64x64).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ssrr.data import formats
from ssrr.data.safety import open_members
from ssrr.data.sources.base import DEFAULT_WORKERS, ImageDecoder, ProgressFactory, no_progress
from ssrr.data.writer import SplitArrays
from ssrr.errors import SsrrError

IMAGE_SUFFIX = ".jpeg"


def load_tiny_imagenet(
    path: Path,
    *,
    size: int | None = None,
    workers: int = DEFAULT_WORKERS,
    progress: ProgressFactory = no_progress,
) -> tuple[dict[str, SplitArrays], list[str], list[str]]:
    """tiny-ImageNet's train, val and test splits, with class names from words.txt."""
    with ImageDecoder(size=size, origin=str(path), workers=workers, progress=progress) as decoder:
        texts, images = _read(path, decoder, progress)
        classes, groups, labels = _layout(path, texts, images)
        arrays, _ = decoder.result(groups)
        splits = {}
        for split in groups:
            fine = np.array(labels[split], dtype=np.int64)
            missing = np.full(len(fine), formats.NO_LABEL, dtype=np.int64)
            originals = decoder.originals(groups[split])
            splits[split] = SplitArrays(arrays[split], fine, missing, originals, decoder.formats)
    return splits, classes, []


def _read(path: Path, decoder: ImageDecoder, progress: ProgressFactory) -> tuple[dict[str, bytes], list[str]]:
    """The text files (by name) and the names of the images, which go to `decoder` as they are read."""
    texts: dict[str, bytes] = {}
    images: list[str] = []
    tick = progress(f"reading {path.name}", None)
    with open_members(path) as members:
        for member in members:
            base = member.name.rsplit("/", 1)[-1]
            if base in ("wnids.txt", "words.txt", "val_annotations.txt"):
                texts[member.name] = member.read()
            elif base.lower().endswith(IMAGE_SUFFIX):
                decoder.add(member.name, member.read())
                images.append(member.name)
                if len(images) % 256 == 0:
                    tick(256)
    tick(len(images) % 256)
    return texts, images


def _layout(
    path: Path, texts: dict[str, bytes], images: list[str]
) -> tuple[list[str], dict[str, list[str]], dict[str, list[int]]]:
    """Class names, the image names of each split (sorted), and their labels."""
    wnids_at = sorted((name for name in texts if name.rsplit("/", 1)[-1] == "wnids.txt"), key=len)
    if not wnids_at:
        raise SsrrError(f"{path}: not a tiny-imagenet-200 tree (no wnids.txt)")
    root = wnids_at[0][: -len("wnids.txt")]  # "" or "tiny-imagenet-200/"
    for needed in ("words.txt", "val/val_annotations.txt"):
        if root + needed not in texts:
            raise SsrrError(f"{path}: not a tiny-imagenet-200 tree (no {root}{needed})")

    def text(name: str) -> list[str]:
        return texts[root + name].decode("utf-8", "replace").splitlines()

    wnids = sorted({line.strip() for line in text("wnids.txt") if line.strip()})
    words = {}
    for line in text("words.txt"):
        wnid, _, names = line.partition("\t")
        words[wnid.strip()] = names.split(",")[0].strip()
    classes = [words.get(wnid) or wnid for wnid in wnids]
    index = {wnid: i for i, wnid in enumerate(wnids)}
    val_labels = {}
    for number, line in enumerate(text("val/val_annotations.txt"), 1):
        fields = line.split("\t")
        if not line.strip():
            continue
        if len(fields) < 2 or fields[1].strip() not in index:
            raise SsrrError(f"{path}: {root}val/val_annotations.txt line {number}: no known wnid in {line!r}")
        val_labels[fields[0].strip()] = index[fields[1].strip()]

    groups: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    labels: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for name in sorted(images):
        if not name.startswith(root):
            continue
        parts = name[len(root) :].split("/")
        if len(parts) == 4 and parts[0] == "train" and parts[2] == "images":
            if parts[1] not in index:
                raise SsrrError(f"{path}: {name}: class {parts[1]} is not in wnids.txt")
            split, label = "train", index[parts[1]]
        elif len(parts) == 3 and parts[0] == "val" and parts[1] == "images":
            if parts[2] not in val_labels:
                raise SsrrError(f"{path}: {name}: not listed in val_annotations.txt")
            split, label = "val", val_labels[parts[2]]
        elif len(parts) == 3 and parts[0] == "test" and parts[1] == "images":
            split, label = "test", formats.NO_LABEL
        else:
            continue
        groups[split].append(name)
        labels[split].append(label)
    if not groups["train"]:
        raise SsrrError(f"{path}: not a tiny-imagenet-200 tree (no train/<wnid>/images/*.JPEG)")
    groups = {split: names for split, names in groups.items() if names}
    return classes, groups, labels
