"""One set of shard rules: `ssrr shard verify` and the loader's check give the same verdict on the same shards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from ssrr.pipelines.shards import plan_shards

from ssrr.data import formats
from ssrr.data.verify import verify_dataset
from ssrr.data.writer import sha256_file

CLASSES, SUPERS = 10, 4


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Two small datasets, without superclasses (0) and with (SUPERS), one shard per split."""
    from ssrr.pipelines.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("rules")
    return {
        supers: write_synthetic(root, f"d{supers}", train=12, test=4, classes=CLASSES, coarse_classes=supers)
        for supers in (0, SUPERS)
    }


def _rewrite_labels(folder: Path, sample: int, fine: int, coarse: int, index: int) -> str:
    """Overwrite one train sample's .lbl in place and re-hash the shard in the manifest (so only the labels
    differ from a good shard); return the sample's key."""
    shard = folder / "train-000000.tar"
    tokens = formats.index_path(shard).read_text().splitlines()[1 + sample].split()
    offset = next(int(tokens[j + 1]) for j in range(0, len(tokens), 4) if tokens[j] == formats.LABELS_EXT)
    with open(shard, "r+b") as handle:
        handle.seek(offset)
        handle.write(np.array([fine, coarse, index], "<i4").tobytes())
    manifest_path = folder / formats.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    for info in manifest["splits"]["train"]["shards"]:
        if info["file"] == shard.name:
            info["sha256"] = sha256_file(shard)
    manifest_path.write_text(json.dumps(manifest))
    return tokens[3].partition(".")[0]


def _fine_of(shard: Path, sample: int) -> int:
    """The fine label stored in one sample's .cls member (kept: the verifier checks .cls against .lbl)."""
    import tarfile

    with tarfile.open(shard) as tar:
        member = tar.getmembers()[0].name.partition(".")[0].rpartition("-")[0] + f"-{sample:09d}.cls"
        handle = tar.extractfile(member)
        assert handle is not None
        return int(handle.read())


def _verdicts(folder: Path) -> tuple[list[str], list[str]]:
    """The problems `ssrr shard verify` finds, and those the loader's check finds (skipping, so all are listed)."""
    plan = plan_shards(folder, formats.load_manifest(folder), "train", skip_corrupt=True)
    plan.close()
    return verify_dataset(folder), plan.problems


@pytest.mark.parametrize(
    ("supers", "labels", "reason"),
    [
        (0, (3, 2), "coarse label 2 but the dataset has no coarse classes"),  # the loader used to accept it
        (0, (42, -1), f"fine label 42 outside 0..{CLASSES - 1}"),
        (0, (-1, -1), f"fine label -1 outside 0..{CLASSES - 1}"),  # a labelled split must be labelled
        (SUPERS, (3, SUPERS), f"coarse label {SUPERS} outside 0..{SUPERS - 1}"),
        (SUPERS, (3, -1), f"coarse label -1 outside 0..{SUPERS - 1}"),
        (0, (3, -1, 7), "carries index 7, which belongs to key train-000000007"),
        (0, (3, -1, 99), "index 99 outside 0..11"),
    ],
)
def test_same_bad_shard_same_verdict(
    clean: dict[int, Path], tmp_path: Path, supers: int, labels: tuple[int, ...], reason: str
) -> None:
    folder = Path(shutil.copytree(clean[supers], tmp_path / "copy"))
    fine, coarse, *index = labels
    key = _rewrite_labels(folder, 2, fine, coarse, index[0] if index else 2)
    verified, loaded = _verdicts(folder)
    assert any(key in p and reason in p for p in verified), verified
    assert any(key in p and reason in p for p in loaded), loaded


@pytest.mark.parametrize("supers", [0, SUPERS])
def test_same_good_shard_same_verdict(clean: dict[int, Path], tmp_path: Path, supers: int) -> None:
    folder = Path(shutil.copytree(clean[supers], tmp_path / "copy"))
    shard = folder / "train-000000.tar"
    fine = _fine_of(shard, 2)
    _rewrite_labels(folder, 2, fine, (SUPERS - 1) if supers else -1, 2)  # another coarse label, a valid one
    assert _verdicts(folder) == ([], [])
