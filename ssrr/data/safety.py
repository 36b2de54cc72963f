"""Reading untrusted dataset archives safely: a restricted unpickler and checked archive members.

Two rules hold for every source that `ssrr shard` reads:

- **Pickles** (the CIFAR python archives) are loaded only through `RestrictedUnpickler`, whose
  ``find_class`` admits exactly the globals a CIFAR pickle needs to rebuild a numpy array
  (``numpy.core.multiarray._reconstruct`` or its numpy 2 name ``numpy._core.multiarray._reconstruct``,
  ``numpy.ndarray`` and ``numpy.dtype``). Any other global (``os.system``, ``builtins.eval``, ...) is refused
  before it is looked up, so nothing in the pickle can run code. Object arrays are refused as well.
- **Archives** (tar, tar.gz, zip) are read member by member straight into memory; nothing is extracted to disk.
  A member with an absolute path, a ``..`` component, a symlink or hardlink, a device file or a fifo is refused
  with a one-line error naming the archive and the member, before any of its data is read.

`open_members` gives one interface over a tar, a zip or an already extracted folder, and
`archive_errors` turns a truncated or corrupt archive into a one-line `SsrrError`.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import io
import lzma
import os
import pickle
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import numpy as np

from ssrr.errors import SsrrError

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct as _numpy_reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct as _numpy_reconstruct  # type: ignore[no-redef]


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's array-unpickling helper, restricted to plain ndarrays."""
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"refused array subtype {subtype!r}")
    return cast(np.ndarray, _numpy_reconstruct(subtype, shape, dtype))


def _dtype(*args: Any) -> np.dtype:
    """``numpy.dtype`` for plain (non-object) element types only."""
    spec = args[0] if args else None
    if isinstance(spec, bytes):
        spec = spec.decode("ascii", "replace")
    if not isinstance(spec, str):
        raise pickle.UnpicklingError(f"refused dtype specification {spec!r}")
    dtype = np.dtype(spec)
    if dtype.hasobject or dtype.fields is not None:
        raise pickle.UnpicklingError(f"refused dtype {spec!r}")
    return dtype


# (module, name) -> the object handed to the unpickler. Nothing else is ever imported.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
}


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for a global outside `ALLOWED_GLOBALS`."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.module = module
        self.name = name


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild dicts, lists, bytes, numbers and plain numpy arrays, and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise RefusedGlobal(module, name) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused persistent id")


def load_pickle(data: bytes, origin: str) -> Any:
    """Unpickle `data` (a Python 2 CIFAR pickle: str keys come back as bytes) with `RestrictedUnpickler`.

    `origin` names the file (and archive member) in the one-line error raised for a refused global or a
    truncated or corrupt pickle.
    """
    unpickler = RestrictedUnpickler(io.BytesIO(data), encoding="bytes")
    try:
        return unpickler.load()
    except RefusedGlobal as exc:
        raise SsrrError(
            f"{origin}: refused to unpickle global {exc.module}.{exc.name} "
            "(a CIFAR pickle holds only numpy arrays, lists, bytes and numbers)"
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, OverflowError, MemoryError) as exc:  # fmt: skip
        raise SsrrError(f"{origin}: not a valid CIFAR pickle ({type(exc).__name__}: {exc})") from None


# --------------------------------------------------------------------------------------------- archives

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".zip")

# Exceptions that mean "the file is truncated or corrupt" while reading an archive.
CORRUPT_ERRORS: tuple[type[BaseException], ...] = (
    tarfile.TarError,
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    EOFError,
    zlib.error,
    gzip.BadGzipFile,
    lzma.LZMAError,
    OSError,
)


def archive_stem(path: Path) -> str:
    """The name of an archive or folder without its archive suffix: ``a/b/cifar10-jpeg.tar.gz`` -> ``cifar10-jpeg``."""
    name = path.name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


@contextlib.contextmanager
def archive_errors(path: Path) -> Iterator[None]:
    """Turn a truncated or corrupt archive (any low-level read error) into one `SsrrError` line naming it."""
    try:
        yield
    except SsrrError:
        raise
    except FileNotFoundError as exc:
        raise SsrrError(f"{exc.filename or path}: no such file") from None
    except CORRUPT_ERRORS as exc:
        what = "unreadable file in folder" if path.is_dir() else "truncated or corrupt archive"
        raise SsrrError(f"{path}: {what} ({type(exc).__name__}: {exc})") from None


def checked_name(archive: Path, name: str) -> str:
    """The member name as a clean relative POSIX path; absolute paths and ``..`` components are refused."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or posix[1:2] == ":":
        raise SsrrError(f"{archive}: refused member {name!r}: absolute path")
    parts = [p for p in posix.split("/") if p and p != "."]
    if ".." in parts:
        raise SsrrError(f"{archive}: refused member {name!r}: '..' path component")
    return "/".join(parts)


def check_tar_member(archive: Path, member: tarfile.TarInfo) -> str | None:
    """Validate one tar member; return its clean name for a regular file, None for a directory."""
    name = checked_name(archive, member.name)
    if member.issym() or member.islnk():
        kind = "symlink" if member.issym() else "hardlink"
        raise SsrrError(f"{archive}: refused member {member.name!r}: {kind} to {member.linkname!r}")
    if member.ischr() or member.isblk():
        raise SsrrError(f"{archive}: refused member {member.name!r}: device file")
    if member.isfifo():
        raise SsrrError(f"{archive}: refused member {member.name!r}: fifo")
    if member.isdir():
        return None
    if not member.isreg():
        raise SsrrError(f"{archive}: refused member {member.name!r}: unsupported type {member.type!r}")
    return name


def check_zip_member(archive: Path, info: zipfile.ZipInfo) -> str | None:
    """Validate one zip member; return its clean name for a regular file, None for a directory."""
    name = checked_name(archive, info.filename)
    mode = info.external_attr >> 16
    if info.create_system == 3 and mode:  # made on Unix: the high bits hold st_mode
        if stat.S_ISLNK(mode):
            raise SsrrError(f"{archive}: refused member {info.filename!r}: symlink")
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            raise SsrrError(f"{archive}: refused member {info.filename!r}: device file")
        if stat.S_ISFIFO(mode):
            raise SsrrError(f"{archive}: refused member {info.filename!r}: fifo")
        if stat.S_ISSOCK(mode):
            raise SsrrError(f"{archive}: refused member {info.filename!r}: socket")
    if info.is_dir():
        return None
    return name


@dataclass
class Member:
    """One regular file of a source: its clean relative name, size, and how to read it.

    For a tar, `open` is valid only until the iteration moves on (members are read as a stream).
    """

    name: str
    size: int
    open: Callable[[], IO[bytes]]

    def read(self) -> bytes:
        with self.open() as handle:
            data = handle.read()
        if len(data) != self.size:
            raise EOFError(f"member {self.name} is truncated ({len(data)} of {self.size} bytes)")
        return data


@contextlib.contextmanager
def open_members(path: Path) -> Iterator[Iterator[Member]]:
    """Iterate over the regular files of a tar (any compression), a zip, or a folder, checked as above.

    Use as ``with open_members(path) as members: for m in members: ...``; read errors inside the block
    become one-line `SsrrError`s naming `path`. Hidden files and folders (``.*``) are skipped.
    """
    path = Path(path)
    if not path.exists():
        raise SsrrError(f"{path}: no such file or folder")
    with archive_errors(path):
        if path.is_dir():
            yield _folder_members(path)
        elif zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                yield _zip_members(path, archive)
        else:
            try:  # stream mode: one sequential pass, no seeking back in a compressed stream
                tar = tarfile.open(path, mode="r|*")  # noqa: SIM115 - closed by the with below
            except tarfile.ReadError as exc:
                raise SsrrError(f"{path}: not a tar or zip archive ({exc})") from None
            with tar:
                yield _tar_members(path, tar)


def _hidden(name: str) -> bool:
    return any(part.startswith(".") for part in name.split("/"))


def _tar_members(path: Path, tar: tarfile.TarFile) -> Iterator[Member]:
    for info in tar:
        name = check_tar_member(path, info)
        if name is None or _hidden(name):
            continue

        def opener(info: tarfile.TarInfo = info) -> IO[bytes]:
            handle = tar.extractfile(info)
            assert handle is not None  # a regular file, checked above
            return handle

        yield Member(name, info.size, opener)


def _zip_members(path: Path, archive: zipfile.ZipFile) -> Iterator[Member]:
    infos = archive.infolist()
    names = [check_zip_member(path, info) for info in infos]  # refuse a bad member before reading any
    for info, name in zip(infos, names, strict=True):
        if name is None or _hidden(name):
            continue
        yield Member(name, info.file_size, functools.partial(archive.open, info))


def _file_opener(path: Path) -> Callable[[], IO[bytes]]:
    def opener() -> IO[bytes]:
        return open(path, "rb")  # Member.read closes it

    return opener


def _folder_members(root: Path) -> Iterator[Member]:
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for file in sorted(files):
            if file.startswith("."):
                continue
            full = Path(directory) / file
            if not full.is_file():
                continue
            name = full.relative_to(root).as_posix()
            yield Member(name, full.stat().st_size, _file_opener(full))
