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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ssrr import __version__
from ssrr.data import codec, formats
from ssrr.data.sizing import DEFAULT_SHARD_BYTES, cut_shards, sample_bytes, split_shard_bytes
from ssrr.errors import SsrrError
from ssrr.files import recover_retired, remove_stale, replace_dir, writer_tag


@dataclass
class SplitArrays:
    """One split held in memory: N images of one size and their labels.

    ``originals`` optionally holds each image's source file bytes where decoding them gives exactly the stored
    pixels (else None): shards in the source's own encoding store those bytes unchanged. ``source_formats``:
    the Pillow formats of the source files (empty for pixel-array sources, which are lossless)."""

    images: np.ndarray  # (N, H, W, 3) uint8
    fine: np.ndarray  # (N,) int; formats.NO_LABEL where unlabeled
    coarse: np.ndarray  # (N,) int; formats.NO_LABEL where absent
    originals: list[bytes | None] | None = None
    source_formats: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.ndim != 4 or self.images.shape[3] != 3 or self.images.dtype != np.uint8:
            raise ValueError(f"images must be (N, H, W, 3) uint8, got {self.images.shape} {self.images.dtype}")
        if len(self.fine) != n or len(self.coarse) != n:
            raise ValueError("labels and images differ in length")
        if self.originals is not None and len(self.originals) != n:
            raise ValueError("originals and images differ in length")

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
    eval_split: str | None = None  # the source's labelled held-out split; None: by rule (formats.default_eval_split)
    validation_split: str | None = None  # a labelled split to choose settings on, not the held-out one
    first_index: dict[str, int] = field(default_factory=dict)  # a split's first sample index (0 where absent)
    validation_carve: dict[str, Any] | None = None  # how the validation split was carved from train (`--val`)
    side_files: dict[str, str] = field(default_factory=dict)  # file name -> text, written beside the manifest

    @property
    def source_formats(self) -> frozenset[str]:
        """The Pillow formats of the source files over all splits (empty for pixel-array sources)."""
        return frozenset().union(*(split.source_formats for split in self.splits.values()))


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
    ext: str,
    payloads: Sequence[bytes],
    labels: Sequence[tuple[int, int]],
    first_index: int,
    with_class: bool = True,
) -> formats.ShardInfo:
    """One tar of samples (pixel member `ext` holding `payloads`, labels (fine, coarse), and with `with_class`
    the WebDataset ``.cls``), and its DALI index."""
    index_lines = []
    with open(path, "wb") as raw:
        out = _HashingWriter(raw)
        for offset, (payload, (fine, coarse)) in enumerate(zip(payloads, labels, strict=True)):
            sample_index = first_index + offset
            key = formats.sample_key(split, sample_index)
            components = (
                (ext, payload),
                (formats.LABELS_EXT, formats.encode_labels(fine, coarse, sample_index)),
                (formats.CLASS_EXT, str(fine).encode()),
            )[: 3 if with_class else 2]
            entry = []
            for member_ext, data in components:
                name = f"{key}.{member_ext}"
                out.write(_ustar_header(name.encode("ascii"), len(data)))
                # USTAR with a short name is one 512-byte header block, then the data.
                entry.append(f"{member_ext} {out.offset} {len(data)} {name}")
                out.write(data)
                if len(data) % tarfile.BLOCKSIZE:
                    out.write(_ZEROS[: tarfile.BLOCKSIZE - len(data) % tarfile.BLOCKSIZE])
            index_lines.append(" ".join(entry))
        # end of archive: two zero blocks, then zeros up to a whole record (as tarfile does)
        out.write(_ZEROS[: 2 * tarfile.BLOCKSIZE])
        if out.offset % tarfile.RECORDSIZE:
            out.write(_ZEROS[: tarfile.RECORDSIZE - out.offset % tarfile.RECORDSIZE])
    formats.index_path(path).write_text(f"v1.2 {len(index_lines)}\n" + "\n".join(index_lines) + "\n")
    return formats.ShardInfo(file=path.name, samples=len(payloads), sha256=out.digest.hexdigest(), bytes=out.offset)


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


ProgressHook = Callable[[str, int], None]  # (split, samples just written)


@dataclass
class _Settings:
    """How `write_dataset` stores the samples of every split."""

    encoding: str
    quality: int | None
    shard_bytes: int
    shard_size: int | None
    workers: int


def encode_split(
    arrays: SplitArrays, order: np.ndarray, encoding: str, quality: int | None, workers: int
) -> list[bytes] | None:
    """The stored bytes of the samples `order` in `encoding` (None for raw: written straight from the arrays).

    Source files already in `encoding` whose decode is exactly the stored pixels are kept byte for byte, unless
    a `quality` is asked for; the rest are encoded (Pillow releases the GIL: `workers` threads)."""
    if encoding == codec.RAW:
        return None
    height, width = arrays.images.shape[1:3]
    originals = arrays.originals if quality is None else None

    def one(position: int) -> bytes:
        original = originals[position] if originals is not None else None
        if original is not None and codec.structure_problem(original, encoding, (height, width)) is None:
            return original
        return codec.encode(arrays.images[position], encoding, quality or codec.DEFAULT_QUALITY)

    positions = [int(p) for p in order]
    if workers <= 1 or len(positions) < 64:
        return [one(p) for p in positions]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, positions, chunksize=64))


def _write_split(
    staging: Path,
    split: str,
    arrays: SplitArrays,
    order: np.ndarray,
    settings: _Settings,
    progress: ProgressHook | None,
    first_index: int = 0,
) -> tuple[formats.SplitInfo, int]:
    """Write one split's shards into `staging`, its samples numbered from `first_index`; its SplitInfo, and how
    many source files were kept unchanged."""
    ext = codec.ENCODINGS[settings.encoding].ext
    with_class = settings.encoding == codec.RAW  # see formats: encoded shards leave out the 1 KB `.cls`
    payloads = encode_split(arrays, order, settings.encoding, settings.quality, settings.workers)
    originals = arrays.originals or []
    kept = sum(payloads[i] is originals[p] for i, p in enumerate(order)) if payloads and originals else 0
    raw_size = int(np.prod(arrays.images.shape[1:]))
    fine = [int(arrays.fine[p]) for p in order]
    stored = [raw_size] * len(order) if payloads is None else [len(payload) for payload in payloads]
    sizes = [sample_bytes(stored[i], fine[i], with_class) for i in range(len(order))]
    target = split_shard_bytes(settings.shard_bytes, sum(sizes))
    info = formats.SplitInfo(samples=len(order), labeled=arrays.labeled, first_index=first_index)
    for number, (start, stop) in enumerate(cut_shards(sizes, target, settings.shard_size)):
        chunk = order[start:stop]
        if payloads is None:
            data = [np.ascontiguousarray(arrays.images[p]).tobytes() for p in chunk]
        else:
            data = payloads[start:stop]
        labels = [(fine[i], int(arrays.coarse[order[i]])) for i in range(start, stop)]
        path = staging / formats.shard_name(split, number)
        info.shards.append(
            write_shard(path, split, ext, data, labels, first_index=first_index + start, with_class=with_class)
        )
        if progress:
            progress(split, len(chunk))
    return info, kept


def write_dataset(
    dataset: DatasetArrays,
    out: Path | str,
    *,
    seed: int = 0,
    shard_size: int | None = None,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    encoding: str | None = None,
    quality: int | None = None,
    workers: int = 1,
    command: str = "",
    progress: ProgressHook | None = None,
) -> formats.Manifest:
    """Shuffle each split with `seed`, write `<out>/<name>/` atomically, return its manifest.

    `encoding`: ``raw`` / ``jpeg`` / ``png`` / ``webp`` (or a manifest value); None picks
    `ssrr.data.codec.default_encoding`. `quality` (lossy encodings): None keeps source files already in the
    encoding unchanged and encodes the rest at `codec.DEFAULT_QUALITY`; a number re-encodes every image at it.
    Shards hold up to `shard_bytes` (less for a split that would get under `MIN_SHARDS`, see `split_shard_bytes`)
    and at most `shard_size` samples.
    """
    if shard_size is not None and shard_size < 1:
        raise SsrrError(f"--shard-size must be at least 1, got {shard_size}")
    if shard_bytes < 1:
        raise SsrrError(f"--shard-bytes must be at least 1, got {shard_bytes}")
    if quality is not None and not 1 <= quality <= 100:
        raise SsrrError(f"--quality must be in 1..100, got {quality}")
    if "train" not in dataset.splits:
        raise SsrrError(f"{dataset.name}: no train split to compute the normalisation statistics from")
    height, width = dataset.splits["train"].images.shape[1:3]
    chosen = (
        codec.get(encoding).name if encoding else codec.default_encoding(max(height, width), dataset.source_formats)
    )
    settings = _Settings(chosen, quality, shard_bytes, shard_size, workers)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    final = out / dataset.name
    clean_leftovers(final)
    staging = Path(tempfile.mkdtemp(prefix=f".{dataset.name}.partial-{writer_tag()}-", dir=out))
    try:
        rng = np.random.default_rng(seed)
        splits: dict[str, formats.SplitInfo] = {}
        kept = 0
        for split in sorted(dataset.splits):
            arrays = dataset.splits[split]
            order = rng.permutation(len(arrays.images))
            first = dataset.first_index.get(split, 0)
            splits[split], split_kept = _write_split(staging, split, arrays, order, settings, progress, first)
            kept += split_kept
        eval_split = _eval_split(dataset, {k: v for k, v in splits.items() if k != dataset.validation_split})
        mean, std = channel_stats(dataset.splits["train"].images)
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
            eval_split=eval_split,
            encoding=chosen,
            quality=(quality or codec.DEFAULT_QUALITY) if codec.ENCODINGS[chosen].lossy else None,
            shard_bytes=shard_bytes,
            source_files_kept=kept if chosen != codec.RAW else None,
            validation_split=_validation_split(dataset, splits, eval_split),
            validation_carve=dataset.validation_carve,
        )
        for file_name, text in dataset.side_files.items():
            (staging / file_name).write_text(text)
        (staging / formats.MANIFEST).write_text(manifest.to_json())
        _swap_into_place(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _eval_split(dataset: DatasetArrays, splits: dict[str, formats.SplitInfo]) -> str | None:
    """The manifest's `eval_split`: the source's, which must be a labelled split, or the rule's."""
    if dataset.eval_split is None:
        return formats.default_eval_split(splits)
    info = splits.get(dataset.eval_split)
    if info is None or not info.labeled:
        raise SsrrError(f"{dataset.name}: evaluation split '{dataset.eval_split}' is missing or not fully labelled")
    return dataset.eval_split


def _validation_split(
    dataset: DatasetArrays, splits: dict[str, formats.SplitInfo], eval_split: str | None
) -> str | None:
    """The manifest's `validation_split`: the dataset's, which must be labelled and not the held-out split."""
    name = dataset.validation_split
    if name is None:
        return None
    info = splits.get(name)
    if info is None or not info.labeled or name == eval_split:
        raise SsrrError(f"{dataset.name}: validation split '{name}' is missing, unlabelled or the held-out split")
    return name


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
    """(key, image HWC uint8, (fine, coarse, index)) of every sample of a split, with the plain tarfile module
    (encoded images are decoded with Pillow)."""
    root = Path(root)
    manifest = formats.load_manifest(root)
    ext = manifest.pixels_ext
    for shard in manifest.shard_paths(root, split):
        with tarfile.open(shard) as tar:
            members: dict[str, dict[str, bytes]] = {}
            for member in tar:
                key, _, member_ext = member.name.partition(".")
                handle = tar.extractfile(member)
                if handle is None:
                    raise SsrrError(f"{shard}: member {member.name} is not a regular file")
                members.setdefault(key, {})[member_ext] = handle.read()
            for key, parts in members.items():
                try:
                    image = codec.decode(parts[ext], manifest.encoding, manifest.image_size)
                except ValueError as exc:
                    raise SsrrError(f"{shard}: {key}: {exc}") from None
                yield key, image, formats.decode_labels(parts[formats.LABELS_EXT])
