"""Fault injection, run folders: planted pickles and damaged states are refused in one line without running
anything, a planted config cannot send a run elsewhere, leftovers of a killed run vanish on resume (which
ends bit-identical), backbones are byte-reproducible, and --skip-corrupt's count is kept."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
from functools import partial
from pathlib import Path

import pytest
from fixtures_data import error_lines, run_config, run_ssrr

from ssrr import files
from ssrr.data import formats
from ssrr.train.checkpoint import list_checkpoints
from ssrr.train.loop import pretrain

config = partial(run_config, epochs=1)


def resume_args(shards: Path, out: Path, *extra: str) -> list[str]:
    common = ["--backbone", "conv4", "--k", "3", "--batch", "32", "--seed", "3", "--num-threads", "1"]
    return [
        "pretrain",
        "--dataset",
        str(shards),
        *common,
        "--out",
        str(out),
        "--name",
        "run",
        "--resume",
        "--quiet",
        *extra,
    ]


def tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


@pytest.fixture(scope="module")
def one_epoch(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder after one epoch (a checkpoint at its end)."""
    return pretrain(config(tiny_shards, tmp_path_factory.mktemp("runs")), show=False).run_dir


@pytest.fixture
def run_copy(one_epoch: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(one_epoch, tmp_path / "runs" / "run"))


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def test_a_planted_pickle_is_refused_and_never_run(run_copy: Path, tiny_shards: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    checkpoint = list_checkpoints(run_copy)[-1]
    for name in ("state.json", "state.safetensors"):
        (checkpoint / name).unlink()
    (checkpoint / "state.pt").write_bytes(pickle.dumps({"optimizer": _Exploit(marker)}))
    before = tree(run_copy)
    result = run_ssrr(*resume_args(tiny_shards, run_copy.parent, "--epochs", "2"))
    assert result.exit_code == 1
    (line,) = error_lines(result)
    assert "state.pt" in line and "pickle" in line
    assert not marker.exists()
    assert tree(run_copy) == before  # refused before anything was written


@pytest.mark.parametrize(
    ("file", "content", "message"),
    [
        ("state.json", lambda marker: pickle.dumps(_Exploit(marker)), "state.json: unreadable training state"),
        ("state.json", lambda _: b'{"format": "ssrr-training-state", "version": 1, "state": {"$eval": "1"}}',
         "unknown marker"),
        ("state.json", lambda _: b'{"format": "ssrr-training-state", "version": 1, "state": {"x": {"$tensor": "no"}}}',
         "missing tensor"),
        ("state.json", lambda _: b'{"format": "other", "state": {}}', "not an ssrr training state"),
        ("state.safetensors", lambda marker: pickle.dumps(_Exploit(marker)), "state.safetensors: not a readable"),
        ("model.safetensors", lambda _: b"\x00" * 64, "model.safetensors: not a readable"),
    ],
)  # fmt: skip
def test_a_damaged_or_planted_state_is_one_line_naming_the_file(
    file: str, content, message: str, run_copy: Path, tiny_shards: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    (list_checkpoints(run_copy)[-1] / file).write_bytes(content(marker))
    result = run_ssrr(*resume_args(tiny_shards, run_copy.parent, "--epochs", "2"))
    assert result.exit_code == 1
    (line,) = error_lines(result)
    assert message in line and file in line
    assert not marker.exists()


def test_a_planted_config_cannot_move_the_run_or_break_it(run_copy: Path, tiny_shards: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    saved = json.loads((run_copy / "config.json").read_text())
    (run_copy / "config.json").write_text(json.dumps({**saved, "out": str(elsewhere), "name": "../../x"}))
    result = run_ssrr(*resume_args(tiny_shards, run_copy.parent, "--epochs", "2"))
    assert result.exit_code == 0, result.output
    assert not elsewhere.exists() and not (tmp_path.parent / "x").exists()
    assert json.loads((run_copy / "throughput.json").read_text())["epochs"] == 2  # resumed in place
    (run_copy / "config.json").write_text(json.dumps({**saved, "epochs": "many"}))
    result = run_ssrr(*resume_args(tiny_shards, run_copy.parent))
    assert result.exit_code == 1 and "config.json: malformed config (epochs = 'many')" in error_lines(result)[0]


def test_a_planted_symlink_log_is_not_written_through(run_copy: Path, tiny_shards: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (run_copy / "metrics.jsonl").unlink()
    (run_copy / "metrics.jsonl").symlink_to(victim)
    result = run_ssrr(*resume_args(tiny_shards, run_copy.parent, "--epochs", "2"))
    assert result.exit_code == 1 and "metrics.jsonl: a symbolic link" in error_lines(result)[0]
    assert victim.read_text() == "precious\n"


def test_leftovers_of_a_killed_run_vanish_and_the_resume_is_bit_identical(
    one_epoch: Path, run_copy: Path, tiny_shards: Path, tmp_path: Path
) -> None:
    # What a kill -9 can leave: a half-written checkpoint folder of the dead process, temp files, a record
    # written after the last checkpoint, and a half-written last log line.
    dead = subprocess.Popen(["true"])
    dead.wait()
    tag = f"{files.writer_tag().split('-')[0]}-{dead.pid}"
    stale = run_copy / "checkpoints" / f".step-{tag}-00000016-abc"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    (run_copy / ".backbone.safetensors.tmp").write_bytes(b"half")
    with open(run_copy / "metrics.jsonl", "a") as log:
        log.write(json.dumps({"epoch": 2, "step": 12, "complete": False}) + "\n" + '{"epoch": 2, "st')
    resumed = pretrain(config(tiny_shards, run_copy.parent, epochs=2), resume=True, show=False)
    straight = pretrain(config(tiny_shards, tmp_path / "straight", epochs=2), show=False)
    assert (resumed.run_dir / "backbone.safetensors").read_bytes() == (
        straight.run_dir / "backbone.safetensors"
    ).read_bytes()
    names = {p.name for p in resumed.run_dir.rglob("*")}
    assert not any(name.startswith(".") for name in names), names
    records = [json.loads(line) for line in (resumed.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["complete"]) for r in records] == [(1, True), (2, True)]


def test_two_identical_runs_write_byte_identical_weights(one_epoch: Path, tiny_shards: Path, tmp_path: Path) -> None:
    again = pretrain(config(tiny_shards, tmp_path), show=False).run_dir
    for name in ("backbone.safetensors", f"checkpoints/{list_checkpoints(again)[-1].name}/model.safetensors"):
        assert (again / name).read_bytes() == (one_epoch / name).read_bytes(), name


def test_safetensors_headers_are_sorted_whatever_the_metadata_order() -> None:
    import torch
    from safetensors.torch import load

    tensors = {"b": torch.arange(3.0), "a": torch.ones(2, dtype=torch.int64)}
    outputs = {
        files.deterministic_safetensors(tensors, dict(order)) for order in
        ([("x", "1"), ("backbone", "conv4"), ("step", "2")], [("step", "2"), ("x", "1"), ("backbone", "conv4")])
    }  # fmt: skip
    assert len(outputs) == 1
    (raw,) = outputs
    assert int.from_bytes(raw[:8], "little") % 8 == 0
    back = load(raw)
    assert torch.equal(back["b"], tensors["b"]) and torch.equal(back["a"], tensors["a"])


def test_skipped_samples_are_recorded_and_said_even_when_quiet(tiny_shards: Path, tmp_path: Path) -> None:
    shards = Path(shutil.copytree(tiny_shards, tmp_path / "shards"))
    manifest = formats.load_manifest(shards)
    last = manifest.splits["train"].shards[-1]
    formats.index_path(shards / last.file).unlink()  # a whole shard unreadable: its samples skipped
    args = ["pretrain", "--dataset", str(shards), "--backbone", "conv4", "--k", "3", "--batch", "32", "--epochs",
            "1", "--num-threads", "1", "--out", str(tmp_path / "runs"), "--name", "skip", "--quiet"]  # fmt: skip
    refused = run_ssrr(*args)
    assert refused.exit_code == 1
    (line,) = error_lines(refused)
    assert "missing DALI index" in line and line.count("re-create") == 1
    result = run_ssrr(*args, "--skip-corrupt")
    assert result.exit_code == 0, result.output
    assert f"skipping {last.samples} corrupt samples" in result.output
    run = tmp_path / "runs" / "skip"
    assert json.loads((run / "throughput.json").read_text())["skipped"] == last.samples
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records and all(r["skipped"] == last.samples for r in records)


def test_a_planted_eval_link_does_not_send_results_elsewhere(run_copy: Path, tiny_shards: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (run_copy / "eval").symlink_to(elsewhere)
    result = run_ssrr("eval", "knn", run_copy, "--dataset", tiny_shards, "--k", "5", "--device", "cpu")
    assert result.exit_code == 1
    (line,) = error_lines(result)
    assert "eval: a symbolic link" in line
    assert list(elsewhere.iterdir()) == []
