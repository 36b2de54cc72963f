"""How `ssrr shard` sizes shards: ``--shard-bytes`` parsing, the bytes a sample takes in a tar, where shards are cut.

A shard holds up to ``--shard-bytes`` (default 256 MB) and at most ``--shard-size`` samples; a split too small for
`MIN_SHARDS` such shards is cut into `MIN_SHARDS` smaller ones (each at least 4 MB), so that every rank of a
multi-process run reads several shards. Sizes count the tar structure exactly (headers, padding, the end of the
archive), so a shard's file never exceeds the bound unless one sample alone does.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Sequence

from ssrr.errors import SsrrError

DEFAULT_SHARD_BYTES = 256_000_000  # --shard-bytes: the most a shard holds
MIN_SHARDS = 8  # a split is cut into at least this many shards ...
MIN_SPLIT_SHARD_BYTES = 4_000_000  # ... as long as each still holds this much


def sample_bytes(payload_size: int, fine: int, with_class: bool) -> int:
    """Bytes one sample takes in a tar: a 512-byte header per member, each member padded to whole blocks."""

    def padded(n: int) -> int:
        return tarfile.BLOCKSIZE + -(-n // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE

    return padded(payload_size) + padded(12) + (padded(len(str(fine))) if with_class else 0)


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20}
_UNITS |= {"gib": 2**30, "tib": 2**40, "k": 10**3, "m": 10**6, "g": 10**9}


def parse_bytes(text: str) -> int:
    """``--shard-bytes``: a plain integer, or a number with a unit: 256MB, 1.5GB, 512MiB."""
    value = text.strip().lower()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value)
    if match is None or match.group(2) not in _UNITS:
        raise SsrrError(f"--shard-bytes {text!r}: give a number of bytes, or e.g. 256MB, 1GB, 512MiB")
    count = int(float(match.group(1)) * _UNITS[match.group(2)])
    if count < 1:
        raise SsrrError(f"--shard-bytes {text!r}: must be at least 1 byte")
    return count


def split_shard_bytes(shard_bytes: int, split_bytes: int) -> int:
    """The shard size used for a split of `split_bytes`: at most `shard_bytes`, and small enough that the split has
    `MIN_SHARDS` shards unless they would hold under 4 MB each: every rank of a multi-process run then reads
    several shards, whatever the upper bound asked for."""
    return min(shard_bytes, max(MIN_SPLIT_SHARD_BYTES, -(-split_bytes // MIN_SHARDS)))


def tar_bytes(members: int) -> int:
    """The size of a tar whose samples take `members` bytes: two zero blocks, then padding to a whole record."""
    return -(-(members + 2 * tarfile.BLOCKSIZE) // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


def cut_shards(sizes: Sequence[int], shard_bytes: int, shard_size: int | None) -> list[tuple[int, int]]:
    """(start, stop) of each shard over samples of `sizes` tar bytes, in order: a shard's tar holds up to
    `shard_bytes` (one larger sample gets a shard of its own) and at most `shard_size` samples."""
    cuts = []
    start, filled = 0, 0
    for i, size in enumerate(sizes):
        full = shard_size is not None and i - start >= shard_size
        if i > start and (tar_bytes(filled + size) > shard_bytes or full):
            cuts.append((start, i))
            start, filled = i, 0
        filled += size
    if start < len(sizes):
        cuts.append((start, len(sizes)))
    return cuts
