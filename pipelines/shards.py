"""Check shards against their manifest and DALI index before a pipeline reads them; split samples by rank.

DALI reads a sample wherever the ``.idx`` file points, without looking at the tar headers, and its errors are
long multi-line reports. So before any pipeline is built, every shard of the split is checked here, cheaply
and vectorised (a memory map of each tar, one pass over its index):

- the tar and its index exist, and the index lists the manifest's number of samples;
- the tar has the manifest's size (a shorter one is truncated);
- every sample has a pixel member (``.rgb`` for raw pixels, ``.jpg``/``.png``/``.webp`` for encoded images) and
  an ``.lbl`` member of the right sizes (raw: H*W*3; labels: 12 bytes) that lie inside the file, 512-byte
  aligned, each preceded by a tar header that names that member with that size;
- an encoded image has its format's signature and end marker, and its header states the manifest's size (no
  decoding: a few microseconds a sample). With ``skip_corrupt`` every encoded image is also decoded once
  (Pillow, in threads), so an undecodable one is dropped and counted before DALI meets it; without it, an image
  that passes these checks but that DALI's decoder rejects stops the run with a one-line error naming the
  shard and the sample (`find_undecodable`);
- the labels keep the data layer's rules (`ssrr.data.rules`, the ones `ssrr shard verify` applies): the sample
  index stored in ``.lbl`` is the one in the member's name, labels lie in range, a coarse label only where the
  dataset has superclasses.

A problem is one clear line naming the shard and the sample (:class:`ssrr.errors.SsrrError`); with
``skip_corrupt`` the bad samples are dropped instead (a filtered index is written to a temporary folder and
DALI reads that) and counted. Pixel bytes have no per-sample checksum, so a flipped pixel goes unnoticed
(the manifest's per-shard sha256 can find that; it is not checked here because hashing every shard at every
start costs more than the check itself).
"""

from __future__ import annotations

import itertools
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ssrr.data import codec, formats
from ssrr.data.rules import label_rules, named_index
from ssrr.errors import SsrrError
from ssrr.files import remove_stale, writer_tag

BLOCK = 512
LABEL_BYTES = 12


@dataclass
class ShardPlan:
    """What the reader is given: tar paths and index paths (filtered copies where samples were dropped)."""

    paths: list[str]
    index_paths: list[str]
    samples: int  # samples the reader will see, all shards together
    skipped: int = 0  # samples dropped as corrupt
    problems: list[str] = field(default_factory=list)  # one line per dropped sample or shard
    tempdir: tempfile.TemporaryDirectory | None = None  # holds filtered index files while the plan lives

    def close(self) -> None:
        if self.tempdir is not None:
            self.tempdir.cleanup()
            self.tempdir = None


@dataclass
class _Index:
    count: int  # from the header line
    keys: list[str]
    lines: list[str]
    offsets: dict[str, np.ndarray]  # ext -> (n,) int64, -1 where missing
    sizes: dict[str, np.ndarray]


def _parse_index(path: Path, shard: Path, needed: tuple[str, ...]) -> _Index:
    try:
        text = path.read_text()
    except OSError as exc:
        raise SsrrError(f"{shard}: cannot read its DALI index {path.name} ({exc.strerror})") from exc
    rows = text.splitlines()
    head = rows[0].split() if rows else []
    if len(head) != 2 or not head[0].startswith("v1") or not head[1].isdigit():
        raise SsrrError(f"{shard}: malformed DALI index {path.name} (header {rows[0] if rows else 'missing'!r})")
    lines = [row for row in rows[1:] if row.strip()]
    n = len(lines)
    offsets = {ext: np.full(n, -1, np.int64) for ext in needed}
    sizes = {ext: np.full(n, -1, np.int64) for ext in needed}
    keys = []
    for i, line in enumerate(lines):
        tokens = line.split()
        key = f"#{i}"
        if len(tokens) % 4 != 0:
            raise SsrrError(f"{shard}: malformed DALI index {path.name}, line {i + 2}: {line[:80]!r}")
        for j in range(0, len(tokens), 4):
            ext, offset, size, name = tokens[j : j + 4]
            key = name.partition(".")[0]
            if ext in offsets:
                if not (offset.isdigit() and size.isdigit()):
                    raise SsrrError(f"{shard}: malformed DALI index {path.name}, line {i + 2}: {line[:80]!r}")
                offsets[ext][i] = int(offset)
                sizes[ext][i] = int(size)
        keys.append(key)
    return _Index(count=int(head[1]), keys=keys, lines=lines, offsets=offsets, sizes=sizes)


def _octal_fields(headers: np.ndarray) -> np.ndarray:
    """The size field (bytes 124..136, octal ASCII, NUL or space terminated) of each tar header row."""
    digits = headers[:, 124:136].astype(np.int64)
    value = np.zeros(len(headers), np.int64)
    live = np.ones(len(headers), bool)
    for k in range(digits.shape[1]):
        d = digits[:, k]
        is_digit = (d >= 48) & (d <= 55)
        leading_pad = (d == 32) & (value == 0) & live  # leading spaces are allowed
        live &= is_digit | leading_pad
        value = np.where(live & is_digit, value * 8 + (d - 48), value)
    return value


def _check_shard(
    shard: Path,
    info: formats.ShardInfo,
    manifest: formats.Manifest,
    split: str,
    *,
    no_labels: bool = False,
    decode: bool = False,
) -> tuple[_Index | None, np.ndarray, list[str], str | None]:
    """(index, ok mask, per-sample problems (without the shard's name), shard-level problem) of one shard.

    ``no_labels``: the split is read as unlabelled beside a labelled one, so a fine label is a problem too.
    ``decode``: encoded images are decoded as well (see `_check_encoded`)."""
    if not shard.is_file():
        return None, np.zeros(0, bool), [], f"{shard}: missing shard (listed in {formats.MANIFEST})"
    idx_path = formats.index_path(shard)
    if not idx_path.is_file():
        return None, np.zeros(0, bool), [], f"{shard}: missing DALI index {idx_path.name}"
    index = _parse_index(idx_path, shard, (manifest.pixels_ext, formats.LABELS_EXT))
    n = len(index.keys)
    shard_problem = None
    if index.count != n or n != info.samples:
        shard_problem = (
            f"{shard}: index {idx_path.name} lists {n} samples (header {index.count}), the manifest {info.samples}"
        )
    file_size = shard.stat().st_size
    if file_size != info.bytes:
        what = "truncated" if file_size < info.bytes else "altered"
        shard_problem = f"{shard}: {what} ({file_size} bytes, the manifest says {info.bytes})"
    ok = np.ones(n, bool)
    reasons = np.full(n, "", dtype=object)
    data = np.memmap(shard, np.uint8, mode="r") if file_size else np.zeros(0, np.uint8)
    labels = _check_members(data, index, ok, reasons, manifest)
    if labels is not None and len(labels[0]):
        _check_labels(labels[0], labels[1], index, ok, reasons, manifest, split, no_labels)
    if manifest.encoded:
        _check_encoded(data, index, ok, reasons, manifest, decode)
    problems = [f"corrupt sample {index.keys[i]} ({reasons[i]})" for i in np.flatnonzero(~ok)]
    return index, ok, problems, shard_problem


def _check_members(
    data: np.ndarray, index: _Index, ok: np.ndarray, reasons: np.ndarray, manifest: formats.Manifest
) -> tuple[np.ndarray, np.ndarray] | None:
    """Flag samples whose pixel or label member is missing, of the wrong size, past the end of the file or
    not behind its tar header; return (rows, (rows, 3) int32 label columns) of the readable `.lbl` members."""
    height, width = manifest.image_size
    pixels_ext = manifest.pixels_ext
    expected = {pixels_ext: height * width * 3, formats.LABELS_EXT: LABEL_BYTES}
    n, file_size = len(index.keys), len(data)
    labels = None
    for ext in (pixels_ext, formats.LABELS_EXT):
        off, size = index.offsets[ext], index.sizes[ext]
        bad = off < 0
        _flag(ok, reasons, bad, f"no .{ext} member")
        if ext == pixels_ext and manifest.encoded:
            _flag(ok, reasons, ~bad & (size < 1), f".{ext} is empty")
        else:
            bad = ~bad & (size != expected[ext])
            _flag(ok, reasons, bad, f".{ext} has {{size}} bytes, expected {expected[ext]}", size)
        inside = (off >= BLOCK) & (off + size <= file_size) & (off % BLOCK == 0)
        _flag(ok, reasons, (off >= 0) & ~inside, f".{ext} lies past the end of the file (truncated)")
        rows = np.flatnonzero(inside & (off >= 0))
        if len(rows):
            headers = data[(off[rows] - BLOCK)[:, None] + np.arange(136)]
            names = np.array([f"{index.keys[r]}.{ext}".encode() for r in rows], dtype="S100")
            stored = np.ascontiguousarray(headers[:, :100]).view("S100")[:, 0]
            sizes_ok = _octal_fields(headers) == size[rows]
            bad_rows = rows[(stored != names) | ~sizes_ok]
            mask = np.zeros(n, bool)
            mask[bad_rows] = True
            _flag(ok, reasons, mask, f"the tar header at the .{ext} member does not match the index")
            if ext == formats.LABELS_EXT:
                good = rows[np.isin(rows, bad_rows, invert=True) & (size[rows] == LABEL_BYTES)]
                labels = (good, data[off[good][:, None] + np.arange(LABEL_BYTES)].copy().view("<i4"))
    return labels


def _check_labels(
    rows: np.ndarray,
    values: np.ndarray,
    index: _Index,
    ok: np.ndarray,
    reasons: np.ndarray,
    manifest: formats.Manifest,
    split: str,
    no_labels: bool,
) -> None:
    """Flag samples whose `.lbl` breaks the data layer's rules (`ssrr.data.rules`, which `ssrr shard verify`
    applies too), and with `no_labels` those that carry a fine label."""
    fine, coarse, stored_index = values[:, 0], values[:, 1], values[:, 2]
    named = np.array([named_index(index.keys[r], split) for r in rows], np.int64)
    n = len(index.keys)
    for rule in label_rules(fine, coarse, stored_index, named, manifest, split):
        for j in np.flatnonzero(rule.mask):
            row = rows[j]
            if ok[row]:  # the first problem of a sample is the one reported
                why = rule.describe(int(fine[j]), int(coarse[j]), int(stored_index[j]), split)
                reasons[row] = f"its .lbl holds impossible labels or a wrong sample index: {why}"
                ok[row] = False
    if no_labels:
        mask = np.zeros(n, bool)
        mask[rows[fine != formats.NO_LABEL]] = True
        _flag(ok, reasons, mask, f"a labelled sample in '{split}', which is read as the unlabelled split")


def _check_encoded(
    data: np.ndarray, index: _Index, ok: np.ndarray, reasons: np.ndarray, manifest: formats.Manifest, decode: bool
) -> None:
    """Encoded pixels: the signature, end marker and stated size of every sample still ok (no decoding, a few us
    each); with `decode`, every such image is decoded too (Pillow, in threads), so no sample fails in DALI."""
    ext = manifest.pixels_ext
    offsets, sizes = index.offsets[ext], index.sizes[ext]

    def problem(i: int) -> str | None:
        payload = data[offsets[i] : offsets[i] + sizes[i]].tobytes()
        found = codec.structure_problem(payload, manifest.encoding, manifest.image_size)
        if found is None and decode:
            try:
                codec.decode(payload, manifest.encoding, manifest.image_size)
            except ValueError as exc:
                found = str(exc)
        return found

    rows = [int(i) for i in np.flatnonzero(ok)]
    if decode:
        with ThreadPoolExecutor(max(1, min(8, len(os.sched_getaffinity(0))))) as pool:
            found = list(pool.map(problem, rows, chunksize=64))
    else:
        found = [problem(i) for i in rows]
    for i, reason in zip(rows, found, strict=True):
        if reason is not None:
            reasons[i] = f".{ext}: {reason}"
            ok[i] = False


def find_undecodable(plan: ShardPlan, manifest: formats.Manifest) -> str | None:
    """'<shard>: corrupt sample <key> (<why>)' for the first sample of the plan that Pillow cannot decode, or None.

    Used after DALI's decoder failed, to name the sample (the structural checks let it through)."""
    for path, index_file in zip(plan.paths, plan.index_paths, strict=True):
        index = _parse_index(Path(index_file), Path(path), (manifest.pixels_ext,))
        data = np.memmap(path, np.uint8, mode="r")
        offsets, sizes = index.offsets[manifest.pixels_ext], index.sizes[manifest.pixels_ext]
        for i, key in enumerate(index.keys):
            try:
                codec.decode(data[offsets[i] : offsets[i] + sizes[i]].tobytes(), manifest.encoding, manifest.image_size)
            except ValueError as exc:
                return f"{path}: corrupt sample {key} ({exc})"
    return None


def _flag(ok: np.ndarray, reasons: np.ndarray, bad: np.ndarray, message: str, sizes: np.ndarray | None = None) -> None:
    for i in np.flatnonzero(bad & ok):
        reasons[i] = message.format(size=int(sizes[i])) if sizes is not None else message
    ok &= ~bad


def combined_splits(root: Path, manifest: formats.Manifest, split: str) -> tuple[str, ...]:
    """The splits that ``split`` names: one (``train``), or several joined by ``+``: labelled splits whose samples
    are numbered apart (train and the validation split carved from it: ``train+val``, the whole original train
    split) and at most one unlabelled split (``train+unlabeled``, STL-10's pretraining set), told apart by its
    missing labels."""
    names = tuple(manifest.split_parts(root, split))
    if len(names) == 1:
        return names
    labeled = [name for name in names if manifest.splits[name].labeled]
    if len(set(names)) != len(names) or len(names) - len(labeled) > 1:
        raise SsrrError(
            f"{root}: split '{split}': splits combine as distinct labelled splits and at most one unlabelled split "
            "(e.g. train+unlabeled, train+val)"
        )
    spans = sorted((manifest.splits[name].first_index, manifest.splits[name].indices.stop, name) for name in labeled)
    for (_, first_stop, first_name), (second_start, _, second_name) in itertools.pairwise(spans):
        if second_start < first_stop:
            raise SsrrError(
                f"{root}: split '{split}': '{first_name}' and '{second_name}' number their samples alike; labelled "
                "splits combine only with a validation split carved from train (`ssrr shard ... --val N`)"
            )
    return names


def index_shifts(manifest: formats.Manifest, names: tuple[str, ...]) -> tuple[int, int]:
    """(labelled samples' shift, unlabelled samples' shift) that number the samples of combined splits apart:
    labelled splits carry distinct indices already; the unlabelled split's go after them, or before them when it
    is named first (``unlabeled+train``: the labelled ones shift past it)."""
    labeled = [manifest.splits[name] for name in names if manifest.splits[name].labeled]
    unlabeled = [manifest.splits[name] for name in names if not manifest.splits[name].labeled]
    if not unlabeled or not labeled:
        return 0, 0
    if not manifest.splits[names[0]].labeled:
        return unlabeled[0].samples, 0
    return 0, max(info.indices.stop for info in labeled)


def _index_tempdir() -> tempfile.TemporaryDirectory:
    """A temporary folder for filtered index files, named after this process; those of killed processes
    (a kill -9 skips the folder's cleanup) are removed first."""
    remove_stale(Path(tempfile.gettempdir()), "ssrr-idx-")
    return tempfile.TemporaryDirectory(prefix=f"ssrr-idx-{writer_tag()}-")


def plan_shards(root: Path, manifest: formats.Manifest, split: str, *, skip_corrupt: bool) -> ShardPlan:
    """Check every shard of ``split`` (or of the splits it combines, see `combined_splits`); return what to give
    the reader, or raise on the first problem."""
    names = combined_splits(root, manifest, split)
    plan = ShardPlan(paths=[], index_paths=[], samples=0)
    hint = "; re-create the shards with `ssrr shard`, or skip corrupt samples (`--skip-corrupt`, skip_corrupt=True)"
    shards = [(name, info) for name in names for info in manifest.splits[name].shards]
    for name, info in shards:
        shard = root / info.file
        no_labels = len(names) > 1 and not manifest.splits[name].labeled
        index, ok, problems, shard_problem = _check_shard(
            shard, info, manifest, name, no_labels=no_labels, decode=skip_corrupt
        )
        if not skip_corrupt:
            if problems:
                first = problems[0]
                more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
                lead = f"{shard_problem}; " if shard_problem else f"{shard}: "
                raise SsrrError(f"{lead}{first}{more}{hint}")
            if shard_problem:
                raise SsrrError(shard_problem + hint)
        if index is None:  # missing tar or index: the whole shard is gone
            plan.skipped += info.samples
            plan.problems.append(shard_problem or f"{shard}: unreadable")
            continue
        if shard_problem:
            plan.problems.append(shard_problem)
        plan.skipped += max(0, info.samples - len(index.keys))  # samples a short index does not list
        keep = int(ok.sum())
        plan.skipped += len(ok) - keep
        plan.problems.extend(f"{shard}: {problem}" for problem in problems)
        if keep == 0:
            continue
        index_file = formats.index_path(shard)
        if keep < len(ok):
            if plan.tempdir is None:
                plan.tempdir = _index_tempdir()
            index_file = Path(plan.tempdir.name) / f"{len(plan.paths):06d}-{index_file.name}"
            kept = [line for line, good in zip(index.lines, ok, strict=True) if good]
            index_file.write_text(f"v1.2 {keep}\n" + "\n".join(kept) + "\n")
        plan.paths.append(str(shard))
        plan.index_paths.append(str(index_file))
        plan.samples += keep
    return plan


def rank_shares(samples: int, world_size: int) -> list[int]:
    """Samples per rank as DALI's readers split them: rank r reads [r*N//W, (r+1)*N//W), contiguously."""
    return [(r + 1) * samples // world_size - r * samples // world_size for r in range(world_size)]


def epoch_slice(rank: int, world_size: int, epoch: int, seed: int) -> int:
    """Which of the W contiguous slices of the sample list (DALI's `shard_id`) rank `rank` trains on in `epoch`.

    A seeded rotation: the slices are put on a cycle in an order drawn from `seed` alone (the same on every
    rank), rank r starts at slice r in epoch 0 and moves one step along the cycle each epoch. So every epoch
    is a one-to-one assignment (the ranks' data are disjoint and cover the split), a rank reads another slice
    in each of W consecutive epochs and all of them over any W consecutive epochs, and the slice is a function
    of (rank, W, epoch, seed) alone: a run resumed at any epoch reads what the uninterrupted run read.
    """
    if world_size == 1:
        return 0
    cycle = np.random.default_rng([seed % (1 << 63), 0x5EC7]).permutation(world_size)
    position = int(np.flatnonzero(cycle == rank)[0])
    return int(cycle[(position + epoch) % world_size])
