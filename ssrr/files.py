"""Writing files so that a crash (kill -9, power loss) never leaves one half-written under its own name.

- `write_text_atomic` / `write_bytes_atomic`: a hidden `.NAME.tmp` beside the target, then one rename; a
  leftover temp file of a killed writer is replaced by the next write of the same file.
- `save_safetensors`: safetensors with its header's keys sorted, so the same tensors and metadata give the
  same bytes (the library writes its metadata map in a per-process random order), written atomically.
- `open_log` / `append_line`: append to a log, refusing a symbolic link (a planted link must not send writes
  elsewhere); `keep_lines` drops a log's half-written last line (and lines the caller no longer wants).
- `replace_dir`: moves a finished folder over an existing one with one atomic exchange where the system has
  it (Linux `renameat2(RENAME_EXCHANGE)`), so the old folder is complete under its name until the new one is.
- `writer_tag` / `remove_stale`: hidden work folders carry their writer's host and process id; a later run
  removes those whose writer is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import shutil
import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

import torch
from safetensors.torch import save as safetensors_bytes

from ssrr.errors import SsrrError

_HEADER_LENGTH = struct.Struct("<Q")  # safetensors: an 8-byte little-endian header length, the JSON header, data
_RENAME_EXCHANGE = 2  # linux/fs.h


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """`path` holds either its old content or `data`, never a part of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path to write `path`'s new content to (e.g. a figure); it replaces `path` on success."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def deterministic_safetensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> bytes:
    """The safetensors bytes of `tensors`, with the JSON header re-written with sorted keys.

    Offsets in the header are relative to the data block, so re-writing the header keeps them valid; the
    header stays padded with spaces to a multiple of 8 bytes, as the format's writer does.
    """
    raw = safetensors_bytes(tensors, metadata=metadata)
    (length,) = _HEADER_LENGTH.unpack_from(raw)
    header = json.loads(raw[8 : 8 + length])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return _HEADER_LENGTH.pack(len(text)) + text + raw[8 + length :]


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write `tensors` (contiguous CPU tensors) to `path` atomically and byte-reproducibly."""
    write_bytes_atomic(path, deterministic_safetensors(tensors, metadata))


def open_log(path: Path) -> TextIO:
    """A log file opened for appending; a symbolic link in its place is refused (a planted link must not
    send the writes elsewhere)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SsrrError(f"{path}: a symbolic link; refusing to write through it") from None
        raise
    return os.fdopen(fd, "a")


def append_line(path: Path, line: str) -> None:
    """Append one line (a newline is added) to a log file, refusing a symbolic link."""
    with open_log(path) as handle:
        handle.write(line + "\n")


def keep_lines(path: Path, keep: Callable[[str], bool]) -> None:
    """Re-write a line log atomically with only its whole lines (ending in a newline) that `keep` accepts:
    drops the half-written last line of a killed writer, and whatever the caller no longer wants."""
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink():
        raise SsrrError(f"{path}: a symbolic link; refusing to write through it")
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if line.endswith("\n") and keep(line)]
    if kept != lines:
        write_text_atomic(path, "".join(kept))


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2); False where the system or file system lacks it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0


def replace_dir(staging: Path, final: Path) -> None:
    """Put the finished folder `staging` at `final`, replacing an existing folder there only once complete.

    With an atomic exchange the old folder ends at `staging` and is removed; a crash before that removal
    leaves it as a stale work folder, which `remove_stale` clears. Without one (other systems), the old
    folder is renamed to a hidden `.NAME.old-TAG` first: `recover_retired` puts it back if a crash came
    between the two renames.
    """
    if not final.exists():
        staging.rename(final)
        return
    if _exchange(staging, final):
        shutil.rmtree(staging, ignore_errors=True)
        return
    retired = final.with_name(f".{final.name}.old-{writer_tag()}")
    final.rename(retired)
    staging.rename(final)
    shutil.rmtree(retired, ignore_errors=True)


def writer_tag() -> str:
    """`<host hash>-<pid>`: who owns a hidden work folder (read back by `_writer_gone`)."""
    host = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
    return f"{host}-{os.getpid()}"


def _writer_gone(tag: str) -> bool:
    """Whether the process that named a work folder `...-<host>-<pid>-...` is gone (only known on this host)."""
    mine = writer_tag().split("-")[0]
    parts = tag.split("-")
    if len(parts) < 2 or parts[0] != mine or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def remove_stale(parent: Path, prefix: str) -> list[Path]:
    """Remove `parent/<prefix><host>-<pid>-...` entries whose writer process is gone; return what was removed."""
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    for entry in parent.iterdir():
        if entry.name.startswith(prefix) and _writer_gone(entry.name[len(prefix) :]):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()
            removed.append(entry)
    return removed


def recover_retired(final: Path) -> Path | None:
    """If `final` is missing but a `.NAME.old-<tag>` of a dead writer holds it, rename it back; return it."""
    if final.exists():
        return None
    prefix = f".{final.name}.old-"
    for entry in sorted(final.parent.iterdir()) if final.parent.is_dir() else []:
        if entry.name.startswith(prefix) and entry.is_dir() and _writer_gone(entry.name[len(prefix) :]):
            entry.rename(final)
            return final
    return None
