"""Any image dataset laid out as ``<split>/<class>/<image>``, as a folder or a .tar/.tar.gz/.tgz/.zip of one.

The tree may sit under one top-level folder (``cifar10-jpeg/train/cat/0001.jpg``). Class names are the
class folder names, sorted, and one class list (the union over splits) labels every split. Every file
whose extension Pillow reads is an image (PNG, JPEG, BMP, GIF, WebP, TIFF, ...); other files and hidden
files are skipped. Images are decoded in a pool of worker processes and converted to RGB.

Resize policy: every image becomes SIZE x SIZE, with SIZE = ``--size`` if given, else the most common
``min(height, width)`` over the train split; an image of another size is resized so its shorter side is
SIZE (bilinear, antialiased) and then centre-cropped. Samples are ordered by their path before the
seeded shuffle, so a folder and an archive of it give identical shards.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ssrr.data import formats
from ssrr.data.safety import open_members
from ssrr.data.sources.base import DEFAULT_WORKERS, ImageDecoder, ProgressFactory, image_extensions, no_progress
from ssrr.data.writer import SplitArrays
from ssrr.errors import SsrrError

LAYOUT = "<split>/<class>/<image>"


def _strip_top(path: Path, names: list[str]) -> int:
    """How many leading folders to drop so that names read `<split>/<class>/<image>`: 0 or 1."""
    depths = {name.count("/") + 1 for name in names}
    tops = {name.split("/", 1)[0] for name in names}
    if depths == {3}:
        return 0
    if depths == {4} and len(tops) == 1:
        return 1
    odd = next(name for name in names if name.count("/") + 1 not in (3, 4)) if depths - {3, 4} else names[0]
    raise SsrrError(f"{path}: not laid out as {LAYOUT} (e.g. {odd!r})")


def load_imagefolder(
    path: Path,
    *,
    size: int | None = None,
    workers: int = DEFAULT_WORKERS,
    progress: ProgressFactory = no_progress,
) -> tuple[dict[str, SplitArrays], list[str], list[str]]:
    """Splits, labelled by class folder, of an image folder tree; all images SIZE x SIZE RGB (see above)."""
    extensions = image_extensions()
    tick = progress(f"reading {path.name}", None)
    names: list[str] = []
    with ImageDecoder(size=size, origin=str(path), workers=workers, progress=progress) as decoder:
        with open_members(path) as members:
            for member in members:
                if os.path.splitext(member.name)[1].lower() in extensions:
                    decoder.add(member.name, member.read())
                    names.append(member.name)
                    if len(names) % 256 == 0:
                        tick(256)
        tick(len(names) % 256)
        if not names:
            raise SsrrError(f"{path}: no image files (expected {LAYOUT})")
        names.sort()  # the order before the seeded shuffle: by path, whatever the archive's order
        strip = _strip_top(path, names)
        grouped: dict[str, list[tuple[str, str]]] = {}
        for name in names:
            split, label, _ = name.split("/")[strip:]
            grouped.setdefault(split, []).append((label, name))
        if "train" not in grouped:
            raise SsrrError(f"{path}: no train split (found: {', '.join(sorted(grouped))}; expected {LAYOUT})")
        arrays, _ = decoder.result({split: [name for _, name in items] for split, items in grouped.items()})
        classes = sorted({label for items in grouped.values() for label, _ in items})
        index = {label: i for i, label in enumerate(classes)}
        splits = {}
        for split, items in grouped.items():
            fine = np.array([index[label] for label, _ in items], dtype=np.int64)
            missing = np.full(len(fine), formats.NO_LABEL, dtype=np.int64)
            originals = decoder.originals([name for _, name in items])
            splits[split] = SplitArrays(arrays[split], fine, missing, originals, decoder.formats)
    return splits, classes, []
