"""Fault injection, sharding: a writer killed (SIGKILL, in a forked child) at chosen points of `write_dataset`
leaves an existing dataset complete under its own name, and the next run of the same command leaves no
visible or hidden leftovers. Also: byte-identical shards, hostile images named by their member."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fixtures_data import error_lines, run_ssrr

from ssrr import files
from ssrr.data import formats
from ssrr.data.writer import DatasetArrays, SplitArrays, write_dataset


def dataset(seed: int, n: int = 120) -> DatasetArrays:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    split = SplitArrays(images, rng.integers(0, 3, n), np.full(n, -1))
    return DatasetArrays("data", {"train": split}, ["a", "b", "c"], [], {"generator": "tests", "seed": str(seed)})


def tree(folder: Path) -> dict[str, str]:
    """Every file under `folder` (hidden ones too) with its sha256."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def killed_while(write: Callable[[], None], arm: Callable[[Callable[[], None]], None]) -> None:
    """Run `write` in a forked child that SIGKILLs itself where `arm` puts the given trigger."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            arm(lambda: os.kill(os.getpid(), signal.SIGKILL))
            write()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, "the child was not killed"


def after_samples(count: int) -> Callable[[Callable[[], None]], Callable[[str, int], None]]:
    """A progress hook that fires the trigger once `count` samples are written."""
    seen = [0]

    def arm(trigger: Callable[[], None]) -> Callable[[str, int], None]:
        def hook(_split: str, n: int) -> None:
            seen[0] += n
            if seen[0] >= count:
                trigger()

        return hook

    return arm


def patch_in_child(target: object, name: str, when: Callable[..., bool]) -> Callable[[Callable[[], None]], None]:
    """Arm: wrap `target.name` so that, in the child, a call for which `when(*args)` holds runs, then kills."""

    def arm(trigger: Callable[[], None]) -> None:
        original = getattr(target, name)

        def wrapped(*args, **kwargs):  # type: ignore[no-untyped-def]
            result = original(*args, **kwargs)
            if when(*args):
                trigger()
            return result

        setattr(target, name, wrapped)

    return arm


KILL_POINTS = {
    "first shard written": "samples:50",
    "all shards written, before the manifest": "samples:120",
    "complete, before the move": "chmod",
    "right after the exchange, before the old copy is removed": "exchange",
    "between the two renames (no atomic exchange)": "retired",
}


def _arm_for(point: str, out: Path) -> tuple[Callable[[Callable[[], None]], None], dict]:
    kwargs: dict = {}
    if point.startswith("samples:"):
        hooks = after_samples(int(point.split(":")[1]))

        def arm(trigger: Callable[[], None]) -> None:
            kwargs["progress"] = hooks(trigger)

        return arm, kwargs
    if point == "chmod":
        return patch_in_child(os, "chmod", lambda path, *_: Path(path).name.startswith(".data.partial-")), kwargs
    if point == "exchange":
        return patch_in_child(files, "_exchange", lambda *_: True), kwargs

    def arm_retired(trigger: Callable[[], None]) -> None:
        files._exchange = lambda a, b: False  # type: ignore[assignment]
        patch_in_child(Path, "rename", lambda src, dst: Path(dst).name.startswith(".data.old-"))(trigger)

    return arm_retired, kwargs


@pytest.mark.parametrize("point", list(KILL_POINTS), ids=list(KILL_POINTS.values()))
def test_a_killed_shard_run_keeps_the_old_dataset_and_the_next_run_leaves_nothing(point: str, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    write_dataset(dataset(1), out, seed=1, shard_size=50)
    before = tree(out / "data")
    arm, kwargs = _arm_for(KILL_POINTS[point], out)
    killed_while(lambda: write_dataset(dataset(2), out, seed=2, shard_size=50, **kwargs), arm)
    if KILL_POINTS[point] == "exchange":  # switched: the new one in place, the old one in a dead work folder
        assert formats.load_manifest(out / "data").source["seed"] == "2"
        assert any(p.name.startswith(".data.partial-") for p in out.iterdir())
    if (out / "data").exists():  # the old dataset whole, or (after the switch) the new one whole
        current = formats.load_manifest(out / "data")
        assert tree(out / "data") == before or current.source["seed"] == "2"
    else:  # only between the two renames of the fallback: the next run puts the old one back first
        assert KILL_POINTS[point] == "retired"
        files.recover_retired(out / "data")
        assert tree(out / "data") == before
    write_dataset(dataset(2), out, seed=2, shard_size=50)  # the same command again
    assert sorted(p.name for p in out.iterdir()) == ["data"]  # no hidden leftovers
    again = tmp_path / "again"
    write_dataset(dataset(2), again, seed=2, shard_size=50)
    assert tree(out / "data") == tree(again / "data")  # complete and byte-identical


def test_only_work_folders_of_dead_writers_are_removed(tmp_path: Path) -> None:
    done = subprocess.run(["true"], check=True)  # a process that has exited: its pid is free
    dead = subprocess.Popen(["true"])
    dead.wait()
    tag = files.writer_tag().split("-")[0]
    stale = tmp_path / f".data.partial-{tag}-{dead.pid}-abc"
    live = tmp_path / f".data.partial-{files.writer_tag()}-xyz"  # this process: alive
    other_host = tmp_path / f".data.partial-00000000-{dead.pid}-abc"  # another machine's: never touched
    for folder in (stale, live, other_host):
        folder.mkdir()
    assert done.returncode == 0
    assert files.remove_stale(tmp_path, ".data.partial-") == [stale]
    assert live.is_dir() and other_host.is_dir() and not stale.exists()


def test_the_same_shard_command_twice_writes_byte_identical_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for folder in ("a", "b"):  # the same command line (the manifest records it), in two places
        (tmp_path / folder).mkdir()
        monkeypatch.chdir(tmp_path / folder)
        result = run_ssrr("shard", "synthetic", "--seed", "4", "--train-per-class", "20", "--test-per-class", "5",
                          "--shard-size", "64")  # fmt: skip
        assert result.exit_code == 0, result.output
    assert tree(tmp_path / "a") == tree(tmp_path / "b") and len(tree(tmp_path / "a")) > 4


def test_a_corrupt_image_is_named_by_its_member_not_a_buffer(tmp_path: Path) -> None:
    from PIL import Image

    for split in ("train", "test"):
        (tmp_path / "src" / split / "cat").mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "src" / split / "cat" / f"{i}.png")
    (tmp_path / "src" / "train" / "cat" / "evil.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    result = run_ssrr("shard", "imagefolder", tmp_path / "src", "--out", tmp_path / "out")
    assert result.exit_code == 1
    (line,) = error_lines(result)
    assert "train/cat/evil.png" in line and "BytesIO" not in line and "0x" not in line
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` pixels over a few bytes of data (a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")
    )


def test_an_image_claiming_a_huge_size_is_refused_before_any_allocation(tmp_path: Path) -> None:
    for split in ("train", "test"):
        (tmp_path / "src" / split / "cat").mkdir(parents=True)
        for i in range(2):
            (tmp_path / "src" / split / "cat" / f"{i}.png").write_bytes(_png_header_only(60_000, 60_000))
    result = run_ssrr("shard", "imagefolder", tmp_path / "src", "--out", tmp_path / "out")
    assert result.exit_code == 1, result.output
    (line,) = error_lines(result)
    assert "cat/0.png: an image of 60000x60000 pixels" in line
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
