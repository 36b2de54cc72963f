"""Write a dataset as deterministic WebDataset shards, DALI index files and a manifest, atomically.

Everything is written into a hidden temporary folder beside the destination and renamed into place only
when complete: an interrupted or failed run leaves no partial dataset and never harms an existing one.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssrr import __version__
from ssrr.data import formats
from ssrr.errors import SsrrError

DEFAULT_SHARD_SIZE = 10_000


@dataclass
class SplitArrays:
    """One split held in memory: N images of one size and their labels."""

    images: np.ndarray  # (N, H, W, 3) uint8
    fine: np.ndarray  # (N,) int; formats.NO_LABEL where unlabeled
    coarse: np.ndarray  # (N,) int; formats.NO_LABEL where absent

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.ndim != 4 or self.images.shape[3] != 3 or self.images.dtype != np.uint8:
            raise ValueError(
                f"images must be (N, H, W, 3) uint8, got {self.images.shape} {self.images.dtype}"
            )
        if len(self.fine) != n or len(self.coarse) != n:
            raise ValueError("labels and images differ in length")

    @classmethod
    def unlabeled(cls, images: np.ndarray) -> SplitArrays:
        missing = np.full(len(images), formats.NO_LABEL, dtype=np.int64)
        return cls(images, missing, missing.copy())

    @property
    def labeled(self) -> bool:
        return bool(len(self.fine)) and bool((self.fine != formats.NO_LABEL).all())


@dataclass
class DatasetArrays:
    """A whole dataset before sharding."""

    name: str
    splits: dict[str, SplitArrays]
    classes: list[str]
    coarse_classes: list[str]
    source: dict[str, str]


def channel_stats(images: np.ndarray, chunk: int = 8192) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images, on the [0, 1] scale, in float64 (exact enough, low memory)."""
    total = np.zeros(3)
    squares = np.zeros(3)
    count = 0
    for start in range(0, len(images), chunk):
        block = images[start : start + chunk].reshape(-1, 3).astype(np.float64) / 255.0
        total += block.sum(0)
        squares += (block**2).sum(0)
        count += len(block)
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(squares / max(count, 1) - mean**2, 0.0))
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


def _member(name: str, payload: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mode = 0o444
    info.mtime = 0  # fixed metadata: same input and seed give byte-identical shards
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_shard(
    path: Path,
    split: str,
    arrays: SplitArrays,
    order: Sequence[int],
    first_index: int,
) -> formats.ShardInfo:
    """One tar of the samples `order` (positions in `arrays`), and its DALI index beside it."""
    index_lines = []
    with open(path, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for offset, position in enumerate(order):
            sample_index = first_index + offset
            key = formats.sample_key(split, sample_index)
            fine, coarse = int(arrays.fine[position]), int(arrays.coarse[position])
            components = (
                (formats.PIXELS_EXT, np.ascontiguousarray(arrays.images[position]).tobytes()),
                (formats.LABELS_EXT, formats.encode_labels(fine, coarse, sample_index)),
                (formats.CLASS_EXT, str(fine).encode()),
            )
            entry = []
            for ext, payload in components:
                header_at = tar.offset
                name = f"{key}.{ext}"
                tar.addfile(_member(name, payload), io.BytesIO(payload))
                # USTAR with a short name is one 512-byte header block, then the data.
                entry.append(f"{ext} {header_at + tarfile.BLOCKSIZE} {len(payload)} {name}")
            index_lines.append(" ".join(entry))
    formats.index_path(path).write_text(f"v1.2 {len(index_lines)}\n" + "\n".join(index_lines) + "\n")
    return formats.ShardInfo(
        file=path.name, samples=len(order), sha256=sha256_file(path), bytes=path.stat().st_size
    )


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


ProgressHook = Callable[[str, int], None]  # (split, samples just written)


def write_dataset(
    dataset: DatasetArrays,
    out: Path | str,
    *,
    seed: int = 0,
    shard_size: int = DEFAULT_SHARD_SIZE,
    command: str = "",
    progress: ProgressHook | None = None,
) -> formats.Manifest:
    """Shuffle each split with `seed`, write `<out>/<name>/` atomically, return its manifest."""
    if shard_size < 1:
        raise SsrrError(f"--shard-size must be at least 1, got {shard_size}")
    if "train" not in dataset.splits:
        raise SsrrError(f"{dataset.name}: no train split to compute the normalisation statistics from")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    final = out / dataset.name
    staging = Path(tempfile.mkdtemp(prefix=f".{dataset.name}.partial-", dir=out))
    try:
        rng = np.random.default_rng(seed)
        splits: dict[str, formats.SplitInfo] = {}
        for split in sorted(dataset.splits):
            arrays = dataset.splits[split]
            order = rng.permutation(len(arrays.images))
            info = formats.SplitInfo(samples=len(order), labeled=arrays.labeled)
            for number, start in enumerate(range(0, len(order), shard_size)):
                chunk = order[start : start + shard_size]
                path = staging / formats.shard_name(split, number)
                info.shards.append(write_shard(path, split, arrays, chunk, first_index=start))
                if progress:
                    progress(split, len(chunk))
            splits[split] = info
        mean, std = channel_stats(dataset.splits["train"].images)
        height, width = dataset.splits["train"].images.shape[1:3]
        manifest = formats.Manifest(
            name=dataset.name,
            image_size=(int(height), int(width)),
            classes=list(dataset.classes),
            coarse_classes=list(dataset.coarse_classes),
            mean=(mean[0], mean[1], mean[2]),
            std=(std[0], std[1], std[2]),
            splits=splits,
            source=dict(dataset.source),
            seed=seed,
            shard_size=shard_size,
            ssrr_version=__version__,
            command=command,
        )
        (staging / formats.MANIFEST).write_text(manifest.to_json())
        _swap_into_place(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _swap_into_place(staging: Path, final: Path) -> None:
    """Rename the finished folder over `final`; an existing dataset is replaced only after success."""
    os.chmod(staging, 0o755)
    if final.exists():
        retired = final.with_name(f".{final.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        final.rename(retired)
        staging.rename(final)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        staging.rename(final)


def iter_samples(root: Path | str, split: str) -> Iterable[tuple[str, np.ndarray, tuple[int, int, int]]]:
    """(key, image HWC uint8, (fine, coarse, index)) of every sample of a split, with the plain tarfile module."""
    root = Path(root)
    manifest = formats.load_manifest(root)
    height, width = manifest.image_size
    for shard in manifest.shard_paths(root, split):
        with tarfile.open(shard) as tar:
            members: dict[str, dict[str, bytes]] = {}
            for member in tar:
                key, _, ext = member.name.partition(".")
                handle = tar.extractfile(member)
                if handle is None:
                    raise SsrrError(f"{shard}: member {member.name} is not a regular file")
                members.setdefault(key, {})[ext] = handle.read()
            for key, parts in members.items():
                image = np.frombuffer(parts[formats.PIXELS_EXT], np.uint8).reshape(height, width, 3)
                yield key, image, formats.decode_labels(parts[formats.LABELS_EXT])
