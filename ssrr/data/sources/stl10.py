"""STL-10 from the official binary archive ``stl10_binary.tar.gz`` (or its extracted ``stl10_binary`` folder).

Members: ``train_X.bin``/``train_y.bin`` (5,000), ``test_X.bin``/``test_y.bin`` (8,000), ``unlabeled_X.bin``
(100,000) and ``class_names.txt``. An ``X`` file is raw uint8, 3 x 96 x 96 per image, each channel stored
column-major: read as (N, 3, 96, 96) it is indexed [image, channel, x, y], so ``transpose(0, 3, 2, 1)``
gives HWC. ``y`` files hold one uint8 label per image, 1..10, stored here as 0..9. The unlabeled split
(labels -1) is 2.7 GB: every ``X`` member is streamed out of the archive in chunks straight into its
final array, so the data is held once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ssrr.data import formats
from ssrr.data.safety import Member, open_members
from ssrr.data.sources.base import ProgressFactory, Tick, no_progress
from ssrr.data.writer import SplitArrays
from ssrr.errors import SsrrError

SIDE = 96
IMAGE_BYTES = 3 * SIDE * SIDE
CHUNK_IMAGES = 1024
SPLITS = ("train", "test", "unlabeled")
LABELED = ("train", "test")


def _read_images(member: Member, origin: str, tick: Tick) -> np.ndarray:
    """Stream an ``X`` member into an (N, 96, 96, 3) uint8 array, chunk by chunk."""
    if member.size % IMAGE_BYTES:
        raise SsrrError(f"{origin}: {member.size} bytes is not a whole number of 3x96x96 images")
    count = member.size // IMAGE_BYTES
    out = np.empty((count, SIDE, SIDE, 3), dtype=np.uint8)
    with member.open() as handle:
        for start in range(0, count, CHUNK_IMAGES):
            n = min(CHUNK_IMAGES, count - start)
            raw = handle.read(n * IMAGE_BYTES)
            if len(raw) != n * IMAGE_BYTES:
                raise SsrrError(f"{origin}: truncated ({start * IMAGE_BYTES + len(raw)} of {member.size} bytes)")
            out[start : start + n] = np.frombuffer(raw, np.uint8).reshape(n, 3, SIDE, SIDE).transpose(0, 3, 2, 1)
            tick(n)
    return out


def load_stl10(
    path: Path, progress: ProgressFactory = no_progress
) -> tuple[dict[str, SplitArrays], list[str], list[str]]:
    """STL-10's train, test and unlabeled splits and its 10 class names."""
    images: dict[str, np.ndarray] = {}
    labels: dict[str, tuple[bytes, str]] = {}
    class_text: str | None = None
    wanted = {f"{s}_X.bin" for s in SPLITS} | {f"{s}_y.bin" for s in LABELED} | {"class_names.txt"}
    seen: set[str] = set()
    tick = progress(f"reading {path.name}", None)
    with open_members(path) as members:
        for member in members:
            base = member.name.rsplit("/", 1)[-1]
            if base not in wanted:
                continue
            if base in seen:
                raise SsrrError(f"{path}: two members named {base} (second: {member.name})")
            seen.add(base)
            origin = f"{path}: {member.name}"
            if base == "class_names.txt":
                class_text = member.read().decode("utf-8", "replace")
            elif base.endswith("_X.bin"):
                images[base.removesuffix("_X.bin")] = _read_images(member, origin, tick)
            else:
                labels[base.removesuffix("_y.bin")] = (member.read(), origin)
    missing = sorted(wanted - seen)
    if missing:
        raise SsrrError(f"{path}: not an STL-10 binary archive (missing {', '.join(missing)})")
    assert class_text is not None
    classes = [line.strip() for line in class_text.splitlines() if line.strip()]
    splits: dict[str, SplitArrays] = {}
    for split in SPLITS:
        if split not in LABELED:
            splits[split] = SplitArrays.unlabeled(images[split])
            continue
        raw, origin = labels[split]
        fine = np.frombuffer(raw, np.uint8).astype(np.int64) - 1
        if len(fine) != len(images[split]):
            raise SsrrError(f"{origin}: {len(fine)} labels for {len(images[split])} images in {split}_X.bin")
        if len(fine) and (fine.min() < 0 or fine.max() >= len(classes)):
            raise SsrrError(f"{origin}: labels outside 1..{len(classes)}")
        splits[split] = SplitArrays(images[split], fine, np.full(len(fine), formats.NO_LABEL, dtype=np.int64))
    return splits, classes, []
