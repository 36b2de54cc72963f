"""Write a dataset as deterministic WebDataset shards, DALI index files and a manifest, atomically.

Everything is written into a hidden work folder beside the destination (`.NAME.partial-<host>-<pid>-...`)
and moved into place only when complete, over an existing dataset in one atomic exchange where the system
allows (see `ssrr.files.replace_dir`): an interrupted or failed run leaves no partial dataset and never
harms an existing one. Work folders of killed writers are removed by the next run of the same name.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ssrr import __version__
from ssrr.data import formats
from ssrr.errors import SsrrError
from ssrr.files import recover_retired, remove_stale, replace_dir, writer_tag

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
            raise ValueError(f"images must be (N, H, W, 3) uint8, got {self.images.shape} {self.images.dtype}")
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
    """Per-channel mean and std of uint8 images, on the [0, 1] scale: exact, from per-channel value counts."""
    counts = np.zeros((3, 256), dtype=np.int64)
    for start in range(0, len(images), chunk):
        block = images[start : start + chunk].reshape(-1, 3)
        for channel in range(3):
            counts[channel] += np.bincount(block[:, channel], minlength=256)
    values = np.arange(256, dtype=np.float64) / 255.0
    count = np.maximum(counts.sum(1), 1)
    mean = counts @ values / count
    std = np.sqrt(np.maximum(counts @ values**2 / count - mean**2, 0.0))
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


def _member(name: str, payload: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mode = 0o444
    info.mtime = 0  # fixed metadata: same input and seed give byte-identical shards
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


# The USTAR header `tarfile` writes for `_member(name, payload)`, built directly: tarfile.addfile costs
# ~100 us a member, which made writing the slowest step of `ssrr shard`. Same bytes (tests check it).
_HEAD_MODE = b"0000444\x000000000\x000000000\x00"  # mode, uid, gid (offsets 100..124)
_HEAD_TAIL = b"00000000000\x00" + b" " * 8 + b"0" + b"\x00" * 100 + b"ustar\x0000" + b"\x00" * 247
_ZEROS = b"\x00" * tarfile.RECORDSIZE


def _ustar_header(name: bytes, size: int) -> bytes:
    """One 512-byte USTAR header of a regular file, mode 0444, uid/gid 0, mtime 0, no user names."""
    if len(name) > 99:
        raise ValueError(f"member name too long for a USTAR header: {name!r}")
    header = bytearray(name.ljust(100, b"\x00") + _HEAD_MODE + b"%011o\x00" % size + _HEAD_TAIL)
    header[148:156] = b"%06o\x00 " % sum(header)  # checksum over the header with its own field as spaces
    return bytes(header)


class _HashingWriter:
    """A file written sequentially, its sha256 and offset kept as it goes."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()
        self.offset = 0

    def write(self, data: bytes) -> None:
        self.handle.write(data)
        self.digest.update(data)
        self.offset += len(data)


def write_shard(
    path: Path,
    split: str,
    arrays: SplitArrays,
    order: Sequence[int] | np.ndarray,
    first_index: int,
) -> formats.ShardInfo:
    """One tar of the samples `order` (positions in `arrays`), and its DALI index beside it."""
    index_lines = []
    with open(path, "wb") as raw:
        out = _HashingWriter(raw)
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
                name = f"{key}.{ext}"
                out.write(_ustar_header(name.encode("ascii"), len(payload)))
                # USTAR with a short name is one 512-byte header block, then the data.
                entry.append(f"{ext} {out.offset} {len(payload)} {name}")
                out.write(payload)
                if len(payload) % tarfile.BLOCKSIZE:
                    out.write(_ZEROS[: tarfile.BLOCKSIZE - len(payload) % tarfile.BLOCKSIZE])
            index_lines.append(" ".join(entry))
        # end of archive: two zero blocks, then zeros up to a whole record (as tarfile does)
        out.write(_ZEROS[: 2 * tarfile.BLOCKSIZE])
        if out.offset % tarfile.RECORDSIZE:
            out.write(_ZEROS[: tarfile.RECORDSIZE - out.offset % tarfile.RECORDSIZE])
    formats.index_path(path).write_text(f"v1.2 {len(index_lines)}\n" + "\n".join(index_lines) + "\n")
    return formats.ShardInfo(file=path.name, samples=len(order), sha256=out.digest.hexdigest(), bytes=out.offset)


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
    clean_leftovers(final)
    staging = Path(tempfile.mkdtemp(prefix=f".{dataset.name}.partial-{writer_tag()}-", dir=out))
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
    """Move the finished folder over `final`; an existing dataset is replaced only after success."""
    os.chmod(staging, 0o755)
    replace_dir(staging, final)


def clean_leftovers(final: Path) -> None:
    """Undo what a killed writer of `final` left: put back a dataset it had moved aside, remove its work folders."""
    recover_retired(final)
    for prefix in (".partial-", ".old-"):
        remove_stale(final.parent, f".{final.name}{prefix}")


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
