"""Fault injection with real processes (slow: each starts python, torch and DALI): `kill -9` of `ssrr shard`
and of `ssrr pretrain` at several moments, then the same command again. Shards: nothing left over, the
dataset complete and byte-identical. Pretraining: resumed to a byte-identical backbone."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def ssrr(*args: str | Path, cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ssrr", *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd
    )


def kill_when(process: subprocess.Popen, ready: Callable[[], bool], timeout: float = 120) -> bool:
    """SIGKILL `process` as soon as `ready()` holds; False if it ended first."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if ready():
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.005)
    process.wait()
    return False


def finish(*args: str | Path, cwd: Path | None = None) -> None:
    process = ssrr(*args, cwd=cwd)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err.decode()


def tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _partial_tars(out: Path) -> int:
    return sum(1 for p in out.glob(".synthetic.partial-*/*.tar")) if out.is_dir() else 0


def test_kill_9_of_ssrr_shard_at_several_moments(tmp_path: Path) -> None:
    args = ["shard", "synthetic", "--seed", "1", "--shard-size", "500", "--out", "shards"]  # the manifest records it
    for folder in ("reference", "work"):
        (tmp_path / folder).mkdir()
    finish(*args, cwd=tmp_path / "reference")
    reference = tree(tmp_path / "reference" / "shards" / "synthetic")
    work = tmp_path / "work"
    out = work / "shards"
    moments: list[Callable[[], bool]] = [
        lambda: _partial_tars(out) >= 1,  # a fresh dataset, mid-write
        lambda: _partial_tars(out) >= 3,  # replacing an existing one, mid-write
        lambda: any(out.glob(".synthetic.partial-*/manifest.json")),  # complete, before the switch
    ]
    killed = 0
    for number, moment in enumerate(moments):
        if number == 1:
            finish(*args, cwd=work)
        killed += kill_when(ssrr(*args, cwd=work), moment)
        if number >= 1:  # an existing dataset stays whole under its name whatever the moment
            assert tree(out / "synthetic") == reference
        finish(*args, cwd=work)  # the same command again
        assert sorted(p.name for p in out.iterdir()) == ["synthetic"], number
        assert tree(out / "synthetic") == reference
    assert killed >= 2, "the writer ended before most kill moments"


def test_kill_9_of_ssrr_pretrain_then_resume_ends_byte_identical(tiny_shards: Path, tmp_path: Path) -> None:
    common = ["--dataset", tiny_shards, "--backbone", "conv4", "--k", "3", "--batch", "32", "--epochs", "3",
              "--seed", "5", "--num-threads", "1", "--quiet"]  # fmt: skip
    finish("pretrain", *common, "--out", tmp_path / "straight", "--name", "run")
    run = tmp_path / "runs" / "run"
    checkpoints = run / "checkpoints"

    def records() -> int:
        metrics = run / "metrics.jsonl"
        return len(metrics.read_text().splitlines()) if metrics.is_file() else 0

    moments: list[Callable[[], bool]] = [
        lambda: (run / "config.json").is_file(),  # started, nothing saved
        lambda: any(checkpoints.glob("step-*")),  # right after the first checkpoint
        lambda: any(checkpoints.glob(".step-*")),  # while a checkpoint is being written
        lambda: records() >= 2,  # after a record, about to checkpoint
    ]
    killed = 0
    for moment in moments:
        killed += kill_when(ssrr("pretrain", *common, "--out", tmp_path / "runs", "--name", "run", "--resume"), moment)
    assert killed >= 2, "the run ended before most kill moments"
    finish("pretrain", *common, "--out", tmp_path / "runs", "--name", "run", "--resume")
    straight = tmp_path / "straight" / "run"
    assert (run / "backbone.safetensors").read_bytes() == (straight / "backbone.safetensors").read_bytes()
    hidden = [p for p in run.rglob(".*")]
    assert hidden == [], hidden
