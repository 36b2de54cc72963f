"""Shard folders from HTTP(S) or object storage, prefetched into a local cache that DALI can read.

DALI's webdataset reader opens local files, so a remote shard folder is copied once, verified, and read
from disk afterwards. `fetch_shards(url, cache)` downloads ``<url>/manifest.json``, then every shard and
DALI index it lists, and returns the local folder::

    <cache>/shards/<sha256(url)[:16]>/<name>/manifest.json, <split>-NNNNNN.tar, <split>-NNNNNN.idx

(`<name>` is the URL's last path component, so the folder keeps the dataset's name.)

Guarantees:

- every shard's sha256 and size are checked against the manifest while it streams in; a mismatch deletes
  the partial file and raises a one-line `SsrrError` naming the shard; nothing unverified is ever renamed
  into place (each file is written to ``.<file>.part-<pid>`` and renamed atomically);
- a DALI index must announce the shard's sample count;
- file names in the manifest must be plain names (no folders, no ``..``): a manifest cannot write outside
  the cache folder;
- ``manifest.json`` is written last: its presence marks a complete, verified copy. A later fetch of the same
  URL then makes no request at all (it checks that every file is there with the manifest's size);
  ``refresh=True`` asks the server for the manifest again, keeps the cached files whose sha256 still matches
  and downloads the rest;
- several processes fetching the same URL at once (every rank of ``accelerate launch``) take turns on a
  file lock: one downloads, the others find the copy complete.

Schemes: ``http://`` and ``https://`` with the standard library. ``s3://``, ``gs://``, ``az://`` and any
other scheme go through `fsspec` when it is installed (with the scheme's own package, e.g. ``s3fs`` or
``gcsfs``); it is optional and not a dependency of ssrr. ``file://`` URLs and plain paths are local folders.

`resolve_dataset_any(name_or_dir_or_url, shards_root, cache)` is `ssrr.data.formats.resolve_dataset` that
also accepts a URL, or a dataset name under a remote ``shards_root``.

Length: over 400 lines because download, verification, caching and crash cleanup of remote shards are one
protocol, read top to bottom; each function fits on a screen.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ssrr.data import formats
from ssrr.data.download import cache_dir
from ssrr.errors import SsrrError
from ssrr.files import remove_stale, writer_tag
from ssrr.options import require_scheme

BLOCK = 1 << 20
TIMEOUT_S = 60
CACHE_SUBDIR = "shards"
LOCK_FILE = ".fetch.lock"
LOCAL_SCHEMES = ("", "file")
HTTP_SCHEMES = ("http", "https")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")

Tick = Callable[[int], None]


@dataclass
class FetchStats:
    """What one `fetch_shards` call did (for tests and the progress summary)."""

    downloaded: int = 0  # files transferred
    cached: int = 0  # files already in the cache and kept
    bytes: int = 0  # bytes transferred


def is_url(text: str | Path) -> bool:
    """Whether `text` names a remote location (a URL with a scheme other than file://)."""
    if isinstance(text, Path):
        return False
    scheme = urllib.parse.urlsplit(str(text)).scheme
    return "://" in str(text) and scheme not in LOCAL_SCHEMES and len(scheme) > 1  # 'C:\\' is not a scheme


def _local_path(text: str | Path) -> Path:
    """A plain path, or the path of a ``file://`` URL."""
    if isinstance(text, str) and text.startswith("file://"):
        return Path(urllib.parse.unquote(urllib.parse.urlsplit(text).path))
    return Path(text).expanduser()


def join_url(base: str, name: str) -> str:
    """`base` + '/' + `name` (exactly one slash; `name` is quoted for the URL)."""
    return base.rstrip("/") + "/" + urllib.parse.quote(name)


def cache_folder(url: str, cache: str | Path | None = None) -> Path:
    """Where the copy of a remote shard folder lives: ``<cache>/shards/<sha256(url)[:16]>/<name>``."""
    base = url.rstrip("/")
    name = urllib.parse.unquote(urllib.parse.urlsplit(base).path.rsplit("/", 1)[-1]) or "dataset"
    if not _PLAIN_NAME.fullmatch(name):
        name = "dataset"
    digest = hashlib.sha256(base.encode()).hexdigest()[:16]
    return cache_dir(cache) / CACHE_SUBDIR / digest / name


# ------------------------------------------------------------------------------------------ transport


@contextlib.contextmanager
def _open_remote(url: str) -> Iterator[tuple[IO[bytes], int | None]]:
    """A readable stream of `url` and its length when known; failures are one-line SsrrErrors."""
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme in HTTP_SCHEMES:
        try:
            response = urllib.request.urlopen(url, timeout=TIMEOUT_S)
        except urllib.error.HTTPError as exc:
            raise SsrrError(f"{url}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise SsrrError(f"{url}: download failed ({reason})") from None
        with response:
            length = response.headers.get("Content-Length")
            yield response, int(length) if length and length.isdigit() else None
        return
    try:
        import fsspec  # optional: s3://, gs://, az://, ... through the scheme's fsspec package
    except ImportError:
        raise SsrrError(
            f"{url}: the {scheme}:// scheme needs the optional fsspec package and its {scheme} backend "
            "(e.g. pip install fsspec s3fs); http(s):// works without them"
        ) from None
    try:
        handle = fsspec.open(url, "rb").open()
    except FileNotFoundError:
        raise SsrrError(f"{url}: not found") from None
    except ImportError as exc:  # the scheme's backend (s3fs, gcsfs, ...) is missing
        raise SsrrError(f"{url}: {exc}") from None
    except (OSError, ValueError) as exc:
        raise SsrrError(f"{url}: cannot open ({exc})") from None
    with handle:
        size = getattr(handle, "size", None)
        yield handle, int(size) if isinstance(size, int) else None


def _read_remote(url: str) -> bytes:
    with _open_remote(url) as (stream, _):
        try:
            return stream.read()
        except OSError as exc:
            raise SsrrError(f"{url}: download failed ({exc})") from None


def _download(url: str, target: Path, tick: Tick, expected_bytes: int | None = None) -> tuple[str, int]:
    """Stream `url` into a hidden part file beside `target`; return (sha256, size) and the part file's path
    stays the caller's to rename or delete: this writes `_part(target)`."""
    part = _part(target)
    digest = hashlib.sha256()
    received = 0
    try:
        with _open_remote(url) as (stream, length), open(part, "wb") as out:
            while chunk := stream.read(BLOCK):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                tick(len(chunk))
                if expected_bytes is not None and received > expected_bytes:
                    break  # longer than the manifest says: no need to read the rest
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise SsrrError(f"{url}: download failed ({exc})") from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    if length is not None and expected_bytes is None and received != length:
        part.unlink(missing_ok=True)
        raise SsrrError(f"{url}: download truncated ({received} of {length} bytes)")
    return digest.hexdigest(), received


def _part(target: Path) -> Path:
    """Where `target` is downloaded to before its rename; a killed download's part is removed by the next
    fetch of the same folder (`remove_stale`: its writer is gone)."""
    return target.with_name(f".{target.name}.part-{writer_tag()}")


# -------------------------------------------------------------------------------------------- helpers


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(BLOCK):
            digest.update(chunk)
    return digest.hexdigest()


def _plain(name: str, url: str) -> str:
    if not _PLAIN_NAME.fullmatch(name) or name in (".", ".."):
        raise SsrrError(f"{url}: manifest lists {name!r}, not a plain file name; refusing it")
    return name


def _index_ok(path: Path, samples: int) -> bool:
    """A DALI index whose header line is ``v1.2 <samples>``."""
    try:
        with open(path) as handle:
            header = handle.readline().split()
    except (OSError, UnicodeDecodeError):
        return False
    return len(header) == 2 and header[0].startswith("v") and header[1] == str(samples)


def _parse_manifest(raw: bytes, url: str) -> formats.Manifest:
    try:
        manifest = formats.Manifest.from_dict(json.loads(raw))
    except (ValueError, KeyError, TypeError) as exc:
        raise SsrrError(f"{url}: malformed manifest ({exc})") from None
    formats.check_readable(manifest, url)
    return manifest


def _complete(folder: Path) -> formats.Manifest | None:
    """The cached manifest when the folder holds every file it lists at the listed size, else None."""
    try:
        manifest = formats.load_manifest(folder)
    except SsrrError:
        return None
    for split in manifest.splits.values():
        for shard in split.shards:
            path = folder / shard.file
            if not path.is_file() or path.stat().st_size != shard.bytes:
                return None
            if not formats.index_path(path).is_file():
                return None
    return manifest


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on the cache folder (fcntl where available), so concurrent fetches take turns."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock; atomic renames still keep every file whole
        yield
        return
    with open(folder / LOCK_FILE, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


class _Progress:
    """A rich progress bar on stderr over the bytes to transfer (or nothing when not shown)."""

    def __init__(self, show: bool, title: str) -> None:
        self.show = show
        self.title = title
        self.bar: Any = None
        self.task: Any = None

    def __enter__(self) -> _Progress:
        if self.show:
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self.bar.__enter__()
            self.task = self.bar.add_task(self.title, total=None)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def total(self, size: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, total=size)

    def describe(self, text: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, description=text)

    def __call__(self, n: int) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, n)


# ---------------------------------------------------------------------------------------------- fetch


def fetch_shards(
    url_or_path: str | Path,
    cache: str | Path | None = None,
    *,
    refresh: bool = False,
    show: bool = True,
    stats: FetchStats | None = None,
) -> Path:
    """The local folder of a shard folder given as a URL (downloaded, verified, cached) or a local path.

    `cache` defaults to ``$SSRR_CACHE`` or ``~/.cache/ssrr`` (as downloads do). A complete cached copy is
    returned without any request unless `refresh`. `stats`, when given, is filled in with what was done.
    """
    stats = stats if stats is not None else FetchStats()
    if not is_url(url_or_path):
        local = _local_path(url_or_path)
        formats.load_manifest(local)  # a clear line when it is not a shard folder
        return local
    url = str(url_or_path).rstrip("/")
    folder = cache_folder(url, cache)
    if not refresh and _complete(folder) is not None:
        return folder
    require_scheme(url)  # before the cache folder is made: s3:// without fsspec names the extra to install
    try:
        with _locked(folder):
            if not refresh and (manifest := _complete(folder)) is not None:  # another process finished it
                stats.cached += sum(2 * len(s.shards) for s in manifest.splits.values()) + 1
                return folder
            _fetch_into(url, folder, show, stats)
    except OSError as exc:
        raise SsrrError(f"{folder}: cannot write the shard cache ({exc})") from None
    return folder


def _fetch_into(url: str, folder: Path, show: bool, stats: FetchStats) -> None:
    manifest_url = join_url(url, formats.MANIFEST)
    raw = _read_remote(manifest_url)
    stats.downloaded += 1
    stats.bytes += len(raw)
    manifest = _parse_manifest(raw, manifest_url)
    shards = [(split, shard) for split, info in manifest.splits.items() for shard in info.shards]
    for _, shard in shards:
        _plain(shard.file, manifest_url)
    (folder / formats.MANIFEST).unlink(missing_ok=True)  # the copy is incomplete until the end
    for name in [formats.MANIFEST] + [
        n for _, shard in shards for n in (shard.file, formats.index_path(Path(shard.file)).name)
    ]:
        remove_stale(folder, f".{name}.part-")  # what killed fetches left
    to_get = []
    for split, shard in shards:
        path = folder / shard.file
        if path.is_file() and path.stat().st_size == shard.bytes and _sha256(path) == shard.sha256:
            stats.cached += 1
            index = formats.index_path(path)
            if index.is_file() and _index_ok(index, shard.samples):
                stats.cached += 1
                continue
            to_get.append((split, shard, False))  # the index only
        else:
            to_get.append((split, shard, True))
    with _Progress(show, f"fetch {folder.name}") as progress:
        progress.total(sum(shard.bytes for _, shard, whole in to_get if whole))
        for _split, shard, whole in to_get:
            path = folder / shard.file
            if whole:
                progress.describe(shard.file)
                shard_url = join_url(url, shard.file)
                digest, size = _download(shard_url, path, progress, shard.bytes)
                if size != shard.bytes or digest != shard.sha256:
                    _part(path).unlink(missing_ok=True)
                    raise SsrrError(
                        f"{shard_url}: shard {shard.file} does not match the manifest "
                        f"(sha256 {digest[:12]}..., {size} bytes; expected {shard.sha256[:12]}..., "
                        f"{shard.bytes} bytes); refused, nothing cached"
                    )
                os.replace(_part(path), path)
                stats.downloaded += 1
                stats.bytes += size
            index = formats.index_path(path)
            index_url = join_url(url, index.name)
            _, size = _download(index_url, index, lambda _n: None)
            if not _index_ok(_part(index), shard.samples):
                _part(index).unlink(missing_ok=True)
                raise SsrrError(f"{index_url}: not a DALI index of {shard.samples} samples; refused")
            os.replace(_part(index), index)
            stats.downloaded += 1
            stats.bytes += size
    tmp = _part(folder / formats.MANIFEST)
    tmp.write_bytes(raw)
    os.replace(tmp, folder / formats.MANIFEST)
    (folder / ".source").write_text(json.dumps({"url": url, "fetched": time.time()}) + "\n")


def resolve_dataset_any(
    name_or_dir_or_url: str | Path,
    shards_root: str | Path = "shards",
    cache: str | Path | None = None,
    *,
    show: bool = True,
) -> Path:
    """A local shard folder for a dataset given as a folder, a name under `shards_root`, or a URL.

    - a URL (``https://host/shards/cifar100``, ``s3://bucket/shards/cifar100``): fetched into the cache;
    - a name with a remote `shards_root` (``cifar100`` and ``https://host/shards``): ``<root>/<name>`` fetched;
    - anything else: `ssrr.data.formats.resolve_dataset` (a local folder, or a name under a local root).
    """
    text = str(name_or_dir_or_url)
    if is_url(text):
        return fetch_shards(text, cache, show=show)
    if text.startswith("file://"):
        return fetch_shards(text, cache, show=show)
    root = str(shards_root)
    if is_url(root) and not (Path(text) / formats.MANIFEST).is_file():
        return fetch_shards(join_url(root, text), cache, show=show)
    if root.startswith("file://"):
        root = str(_local_path(root))
    return formats.resolve_dataset(text, root)
