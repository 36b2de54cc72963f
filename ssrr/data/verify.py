"""Check a shard folder against its manifest: hashes, sample counts, members, labels, indices, DALI indexes.

Encoded pixels (jpeg, png, webp) are decoded in full with Pillow: verification finds any undecodable sample.
`verify_dataset` returns a list of problems (`verify_report` the same per split, with counts), each one
line naming the shard file (and sample key where there is one); an empty list means the folder is intact.
`ssrr shard verify` prints them.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ssrr.data import codec, formats
from ssrr.data.rules import label_rules, named_index
from ssrr.data.writer import sha256_file
from ssrr.errors import SsrrError


@dataclass
class SplitReport:
    """What verification found for one split."""

    samples: int = 0
    shards: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)


def _pixel_problem(data: bytes, manifest: formats.Manifest) -> str | None:
    """What is wrong with a sample's pixel member: its size (raw), or its structure and decode (encoded)."""
    height, width = manifest.image_size
    if not manifest.encoded:
        expected = height * width * 3
        return None if len(data) == expected else f"has {len(data)} bytes, expected {expected}"
    problem = codec.structure_problem(data, manifest.encoding, manifest.image_size)
    if problem is None:
        try:
            codec.decode(data, manifest.encoding, manifest.image_size)
        except ValueError as exc:
            problem = str(exc)
    return problem


def _check_sample(
    where: str,
    key: str,
    parts: dict[str, bytes],
    split: str,
    manifest: formats.Manifest,
) -> tuple[list[str], int | None]:
    """Problems with one sample's members, and the index it carries (None if unreadable)."""
    problems = []
    members = manifest.members
    for ext in members:
        if ext not in parts:
            problems.append(f"{where}: {key}: no .{ext} member")
    for ext in sorted(set(parts) - set(members)):
        problems.append(f"{where}: {key}: unexpected member .{ext}")
    if manifest.pixels_ext in parts:
        problem = _pixel_problem(parts[manifest.pixels_ext], manifest)
        if problem:
            problems.append(f"{where}: {key}: .{manifest.pixels_ext} {problem}")
    raw = parts.get(formats.LABELS_EXT)
    if raw is None:
        return problems, None
    if len(raw) != 12:
        problems.append(f"{where}: {key}: .{formats.LABELS_EXT} has {len(raw)} bytes, expected 12")
        return problems, None
    fine, coarse, index = formats.decode_labels(raw)
    columns = (np.array([fine]), np.array([coarse]), np.array([index]), np.array([named_index(key, split)]))
    for rule in label_rules(*columns, manifest, split):
        problems.append(f"{where}: {key}: {rule.describe(fine, coarse, index, split)}")
    cls = parts.get(formats.CLASS_EXT)
    if cls is not None and cls != str(fine).encode():
        problems.append(f"{where}: {key}: .{formats.CLASS_EXT} {cls[:20]!r} differs from fine label {fine}")
    return problems, index


def _check_index(shard: Path, offsets: list[tuple[str, int, int]], samples: int) -> list[str]:
    """The DALI .idx beside a shard must list every member at its data offset and size."""
    idx = formats.index_path(shard)
    if not idx.is_file():
        return [f"{idx.name}: missing (DALI needs it)"]
    lines = idx.read_text(errors="replace").splitlines()
    head = lines[0].split() if lines else []
    if len(head) != 2 or head[0] != "v1.2" or not head[1].isdigit() or int(head[1]) != samples:
        return [f"{idx.name}: header {lines[0] if lines else ''!r} is not 'v1.2 {samples}'"]
    listed = []
    for line in lines[1:]:
        fields = line.split()
        if len(fields) % 4:
            return [f"{idx.name}: malformed line {line[:80]!r}"]
        for i in range(0, len(fields), 4):
            _ext, offset, size, name = fields[i : i + 4]
            if not (offset.isdigit() and size.isdigit()):
                return [f"{idx.name}: malformed line {line[:80]!r}"]
            listed.append((name, int(offset), int(size)))
    if sorted(listed) != sorted(offsets):
        return [f"{idx.name}: does not match the members of {shard.name}"]
    return []


def verify_report(
    root: Path | str, progress: Callable[[int], None] | None = None
) -> tuple[formats.Manifest, dict[str, SplitReport]]:
    """Verify every shard of the folder `root`; returns the manifest and a report per split.

    `progress` is called with each shard's sample count as it is checked.
    """
    root = Path(root)
    manifest = formats.load_manifest(root)
    reports: dict[str, SplitReport] = {}
    key_pattern = re.compile(r"(.+)-(\d{9})")
    for split, info in manifest.splits.items():
        report = reports[split] = SplitReport()
        seen: dict[int, str] = {}
        for shard_info in info.shards:
            shard = root / shard_info.file
            where = shard_info.file
            report.shards += 1
            if not shard.is_file():
                report.problems.append(f"{where}: missing")
                continue
            report.bytes += shard.stat().st_size
            actual = sha256_file(shard)
            if actual != shard_info.sha256:
                report.problems.append(f"{where}: sha256 {actual} differs from the manifest's {shard_info.sha256}")
            samples: dict[str, dict[str, bytes]] = {}
            offsets: list[tuple[str, int, int]] = []
            try:
                with tarfile.open(shard, mode="r:") as tar:
                    for member in tar:
                        if not member.isreg():
                            report.problems.append(f"{where}: {member.name}: not a regular file")
                            continue
                        key, _, ext = member.name.partition(".")
                        handle = tar.extractfile(member)
                        assert handle is not None
                        samples.setdefault(key, {})[ext] = handle.read()
                        offsets.append((member.name, member.offset_data, member.size))
            except (tarfile.TarError, EOFError, OSError) as exc:
                report.problems.append(f"{where}: unreadable tar ({exc})")
            if len(samples) != shard_info.samples:
                report.problems.append(f"{where}: {len(samples)} samples, manifest says {shard_info.samples}")
            report.problems += _check_index(shard, offsets, len(samples))
            for key, parts in samples.items():
                match = key_pattern.fullmatch(key)
                if match is None or match.group(1) != split:
                    report.problems.append(f"{where}: {key}: key is not '{split}-<9 digits>'")
                problems, index = _check_sample(where, key, parts, split, manifest)
                report.problems += problems
                if index is None:
                    continue
                if index in seen:
                    report.problems.append(f"{where}: {key}: index {index} already used in {seen[index]}")
                else:
                    seen[index] = f"{where}: {key}"
            report.samples += len(samples)
            if progress:
                progress(shard_info.samples)
        if report.samples != info.samples:
            report.problems.append(f"{split}: {report.samples} samples in shards, manifest says {info.samples}")
        numbers = info.indices
        span = f"{numbers.start}..{numbers.stop - 1}"
        missing = np.setdiff1d(np.asarray(numbers), np.fromiter(seen, dtype=np.int64, count=len(seen)))
        if len(missing):
            shown = ", ".join(str(i) for i in missing[:5]) + (" ..." if len(missing) > 5 else "")
            report.problems.append(f"{split}: {len(missing)} indices of {span} missing ({shown})")
    return manifest, reports


def verify_dataset(root: Path | str) -> list[str]:
    """All problems found in the shard folder `root` (empty when it verifies)."""
    try:
        _, reports = verify_report(root)
    except SsrrError as exc:
        return [str(exc)]
    return [problem for report in reports.values() for problem in report.problems]
