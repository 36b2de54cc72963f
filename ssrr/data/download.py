"""Download the official dataset archives, check them against their published checksums, and cache them.

A download is written to ``<cache>/<file>.part`` and renamed to ``<cache>/<file>`` only once its MD5 matches
the published one (the checksums torchvision and the dataset pages publish). A mismatch or a failed transfer
deletes the ``.part`` file and raises a one-line `SsrrError` naming the URL; nothing half-made stays in the
cache. The cache is ``--cache``, else ``$SSRR_CACHE``, else ``~/.cache/ssrr``.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ssrr.errors import SsrrError

if TYPE_CHECKING:  # (not at run time: ssrr.data.sources imports this module)
    from ssrr.data.sources.base import ProgressFactory


def no_progress(description: str, total: int | None = None) -> Callable[[int], None]:
    """Show nothing (the same as `ssrr.data.sources.base.no_progress`)."""
    return lambda _n: None


@dataclass(frozen=True)
class Archive:
    """An official dataset archive: where it is published, its MD5, and its file name."""

    url: str
    md5: str
    filename: str


ARCHIVES: dict[str, Archive] = {
    "cifar10": Archive(
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
        "cifar-10-python.tar.gz",
    ),
    "cifar100": Archive(
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
        "cifar-100-python.tar.gz",
    ),
    "stl10": Archive(
        "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
        "91f7769df0f17e558f3565bffb0c7dfb",
        "stl10_binary.tar.gz",
    ),
    "tiny-imagenet": Archive(
        "http://cs231n.stanford.edu/tiny-imagenet-200.zip",
        "90528d7ca1a48142e341f4553e64c10a",
        "tiny-imagenet-200.zip",
    ),
}

BLOCK = 1 << 20
TIMEOUT_S = 60


def cache_dir(override: Path | str | None = None) -> Path:
    """The download cache: `override`, else ``$SSRR_CACHE``, else ``~/.cache/ssrr``."""
    if override is not None:
        return Path(override).expanduser()
    if os.environ.get("SSRR_CACHE"):
        return Path(os.environ["SSRR_CACHE"]).expanduser()
    return Path.home() / ".cache" / "ssrr"


def file_digests(path: Path, progress: ProgressFactory = no_progress) -> tuple[str, str]:
    """(md5, sha256) of a file in one pass."""
    md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    tick = progress(f"checksum {path.name}", path.stat().st_size)
    with open(path, "rb") as handle:
        while chunk := handle.read(BLOCK):
            md5.update(chunk)
            sha256.update(chunk)
            tick(len(chunk))
    return md5.hexdigest(), sha256.hexdigest()


def official_archive(dataset: str, path: Path) -> Archive | None:
    """The official archive that `path` claims to be (by its file name), if any."""
    archive = ARCHIVES.get(dataset)
    return archive if archive is not None and path.name == archive.filename else None


def check_source_file(dataset: str, path: Path, progress: ProgressFactory = no_progress) -> str:
    """sha256 of a local source archive; one named like the official archive must also match its MD5."""
    md5, sha256 = file_digests(path, progress)
    archive = official_archive(dataset, path)
    if archive is not None and md5 != archive.md5:
        raise SsrrError(
            f"{path}: md5 {md5} does not match the official {archive.filename} (md5 {archive.md5}); "
            "the file is corrupt or not the official archive"
        )
    return sha256


def fetch(dataset: str, cache: Path | str | None = None, progress: ProgressFactory = no_progress) -> tuple[Path, str]:
    """(path, sha256) of the official archive of `dataset`, from the cache or downloaded into it.

    Either way the file's MD5 has been checked against the published one.
    """
    archive = ARCHIVES.get(dataset)
    if archive is None:
        raise SsrrError(f"{dataset}: no official archive to download; give one with --source")
    folder = cache_dir(cache)
    target = folder / archive.filename
    if target.is_file():
        md5, sha256 = file_digests(target, progress)
        if md5 == archive.md5:
            return target, sha256
        target.unlink()  # a damaged cache entry: fetch it again
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SsrrError(f"{folder}: cannot create the download cache ({exc})") from None
    part = target.with_name(target.name + ".part")
    try:
        md5, sha256 = _download(archive.url, part, progress)
        if md5 != archive.md5:
            raise SsrrError(
                f"{archive.url}: checksum mismatch (expected md5 {archive.md5}, got {md5}); nothing was cached"
            )
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)
    return target, sha256


def _download(url: str, part: Path, progress: ProgressFactory) -> tuple[str, str]:
    """Stream `url` into `part`; return the (md5, sha256) of what arrived."""
    md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(part, "wb") as handle:
            length = response.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            tick = progress(f"download {url.rsplit('/', 1)[-1]}", expected)
            received = 0
            while chunk := response.read(BLOCK):
                handle.write(chunk)
                md5.update(chunk)
                sha256.update(chunk)
                received += len(chunk)
                tick(len(chunk))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise SsrrError(f"{url}: download failed ({reason})") from None
    if expected is not None and received != expected:
        raise SsrrError(f"{url}: download truncated ({received} of {expected} bytes)")
    return md5.hexdigest(), sha256.hexdigest()
