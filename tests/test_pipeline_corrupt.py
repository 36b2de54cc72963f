"""Truncated and corrupt shards: one clear SsrrError naming the shard and the sample, or skip and count."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from ssrr.pipelines import recipes
from ssrr.pipelines.loader import ViewLoader
from ssrr.pipelines.running import dali_message
from ssrr.pipelines.shards import ShardPlan
from ssrr.pipelines.synthetic import write_synthetic

from ssrr.data import formats
from ssrr.errors import SsrrError

N, SHARD = 60, 20  # train-000000.tar .. train-000002.tar, 20 samples each


@pytest.fixture(scope="module")
def pipe_clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("pipe"), "clean", kind="smooth", train=N, test=8, shard_size=SHARD)


@pytest.fixture
def pipe_copy(pipe_clean: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(pipe_clean, tmp_path / "copy"))


def _index_rows(shard: Path) -> list[list[str]]:
    lines = formats.index_path(shard).read_text().splitlines()[1:]
    return [line.split() for line in lines]


def _offset(shard: Path, sample: int, ext: str) -> int:
    tokens = _index_rows(shard)[sample]
    for j in range(0, len(tokens), 4):
        if tokens[j] == ext:
            return int(tokens[j + 1])
    raise KeyError(ext)


def _key(shard: Path, sample: int) -> str:
    return _index_rows(shard)[sample][3].partition(".")[0]


def _eval_indices(loader: ViewLoader) -> list[int]:
    out: list[int] = []
    for batch in loader.epoch(0):
        out += batch.index[batch.valid].tolist()
    return out


def test_clean_shards_pass(pipe_clean: Path) -> None:
    loader = ViewLoader(pipe_clean, recipes.evaluation(), batch_size=16, training=False)
    assert loader.skipped == 0 and loader.problems == []
    assert sorted(_eval_indices(loader)) == list(range(N))


def test_truncated_shard(pipe_copy: Path) -> None:
    shard = pipe_copy / "train-000001.tar"
    cut = _offset(shard, 12, "rgb") + 100  # inside sample 12's pixels
    with open(shard, "r+b") as handle:
        handle.truncate(cut)
    with pytest.raises(SsrrError) as error:
        ViewLoader(pipe_copy, recipes.evaluation(), batch_size=16, training=False)
    message = str(error.value)
    assert "\n" not in message
    assert "train-000001.tar" in message and "truncated" in message
    assert _key(shard, 12) in message  # the first lost sample
    loader = ViewLoader(pipe_copy, recipes.evaluation(), batch_size=16, training=False, skip_corrupt=True)
    assert loader.skipped == SHARD - 12
    assert any("truncated" in p for p in loader.problems)
    seen = _eval_indices(loader)
    assert len(seen) == len(set(seen)) == N - loader.skipped
    training = ViewLoader(pipe_copy, recipes.relational(2), batch_size=8, skip_corrupt=True)
    assert len(training) == (N - loader.skipped) // 8
    assert sum(len(b.index) for b in training.epoch(0)) == len(training) * 8


def test_corrupt_header_names_the_sample(pipe_copy: Path) -> None:
    shard = pipe_copy / "train-000002.tar"
    header = _offset(shard, 5, "rgb") - 512
    with open(shard, "r+b") as handle:
        handle.seek(header)
        handle.write(b"garbage-name.rgb\0")
    with pytest.raises(SsrrError, match=r"train-000002\.tar: corrupt sample .*tar header") as error:
        ViewLoader(pipe_copy, recipes.evaluation(), batch_size=16, training=False)
    assert _key(shard, 5) in str(error.value) and "skip_corrupt=True" in str(error.value)
    loader = ViewLoader(pipe_copy, recipes.evaluation(), batch_size=16, training=False, skip_corrupt=True)
    assert loader.skipped == 1
    seen = _eval_indices(loader)
    assert len(seen) == N - 1 and int(_key(shard, 5).rpartition("-")[2]) not in seen


def test_wrong_member_size_in_index(pipe_copy: Path) -> None:
    shard = pipe_copy / "train-000000.tar"
    index = formats.index_path(shard)
    lines = index.read_text().splitlines()
    tokens = lines[3].split()  # sample 2
    tokens[2] = "3000"  # rgb size: 3072 expected for 32x32x3
    lines[3] = " ".join(tokens)
    index.write_text("\n".join(lines) + "\n")
    with pytest.raises(SsrrError, match=r"\.rgb has 3000 bytes, expected 3072") as error:
        ViewLoader(pipe_copy, recipes.evaluation(), batch_size=16, training=False)
    assert _key(shard, 2) in str(error.value)
    loader = ViewLoader(pipe_copy, recipes.evaluation(), batch_size=16, training=False, skip_corrupt=True)
    assert loader.skipped == 1 and len(_eval_indices(loader)) == N - 1
    loader.close()


def test_corrupt_labels(pipe_copy: Path) -> None:
    shard = pipe_copy / "train-000001.tar"
    with open(shard, "r+b") as handle:
        handle.seek(_offset(shard, 7, "lbl"))
        handle.write(np.array([3, -1, 999_999], "<i4").tobytes())  # sample index out of range
    with pytest.raises(SsrrError, match="impossible labels or a wrong sample index") as error:
        ViewLoader(pipe_copy, recipes.evaluation(), batch_size=16, training=False)
    assert _key(shard, 7) in str(error.value)


def test_missing_shard_and_index(pipe_copy: Path) -> None:
    formats.index_path(pipe_copy / "train-000001.tar").unlink()
    with pytest.raises(SsrrError, match=r"train-000001\.tar: missing DALI index"):
        ViewLoader(pipe_copy, recipes.evaluation(), training=False)
    (pipe_copy / "train-000002.tar").unlink()
    loader = ViewLoader(pipe_copy, recipes.evaluation(), batch_size=16, training=False, skip_corrupt=True)
    assert loader.skipped == 2 * SHARD
    assert sorted(_eval_indices(loader)) == sorted(_eval_indices(loader)) and len(_eval_indices(loader)) == SHARD


def test_dali_errors_become_one_line(pipe_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shard that slips past the checks (here: the checks are switched off) still fails in one line."""
    shard = pipe_copy / "train-000001.tar"
    with open(shard, "r+b") as handle:
        handle.truncate(_offset(shard, 3, "rgb"))

    def unchecked(root: Path, manifest, split: str, *, skip_corrupt: bool) -> ShardPlan:
        paths = manifest.shard_paths(root, split)
        return ShardPlan([str(p) for p in paths], [str(formats.index_path(p)) for p in paths], N)

    monkeypatch.setattr("ssrr.pipelines.loader.plan_shards", unchecked)
    loader = ViewLoader(pipe_copy, recipes.evaluation(), batch_size=16, training=False)
    with pytest.raises(SsrrError) as error:
        list(loader.epoch(0))
    message = str(error.value)
    assert "\n" not in message and message.startswith(str(pipe_copy)) and "DALI" in message


def test_dali_message_parsing() -> None:
    report = (
        "Critical error in pipeline:\nError in CPU operator `nvidia.dali.fn.readers.webdataset`,\n"
        "which was used in the pipeline definition with the following traceback:\n\n"
        '  File "x.py", line 1, in f\n    rgb = fn.readers.webdataset(...)\n\nencountered:\n\n'
        '[/opt/dali/dali/operators/reader/loader/webdataset_loader.cc:123] Assert on "x < y" failed: '
        "Index file reports data past the end of the archive\nC++ context: [...]\n"
        "Current pipeline object is no longer valid."
    )
    assert dali_message(RuntimeError(report)) == (
        "nvidia.dali.fn.readers.webdataset: Index file reports data past the end of the archive"
    )
    assert dali_message(RuntimeError("plain")) == "plain"
