"""`ssrr shard` end to end: shards read back by webdataset and DALI, determinism, atomicity, verify, info."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from fixtures_data import (
    error_lines,
    make_cifar10,
    make_cifar100,
    make_imagefolder,
    run_ssrr,
    shard_samples,
    tar_tree,
)

from ssrr.data import formats
from ssrr.data.sources import load_dataset
from ssrr.data.verify import verify_dataset
from ssrr.data.writer import iter_samples, sha256_file, write_dataset


def _shard_hashes(root: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(root.iterdir())}


def test_cli_cifar100_and_readback_with_webdataset(tmp_path: Path) -> None:
    import webdataset as wds

    path, expected = make_cifar100(tmp_path)
    result = run_ssrr("shard", "cifar100", "--source", path, "--out", tmp_path / "out", "--shard-size", "5")
    assert result.exit_code == 0, result.output
    root = tmp_path / "out" / "cifar100"
    manifest = formats.load_manifest(root)
    assert manifest.command == f"ssrr shard cifar100 --source {path} --out {tmp_path / 'out'} --shard-size 5"
    for split in ("train", "test"):
        urls = [str(p) for p in manifest.shard_paths(root, split)]
        dataset = wds.WebDataset(urls, shardshuffle=False, empty_check=False)
        found = []
        for sample in dataset:
            fine, coarse, index = formats.decode_labels(sample["lbl"])
            assert sample["__key__"] == formats.sample_key(split, index)
            assert int(sample["cls"]) == fine
            found.append((sample["rgb"], fine, coarse))
        assert sorted(found) == expected.samples(split)  # each sample once, pixel-exact, with both labels


def test_readback_with_dali(tmp_path: Path) -> None:
    from nvidia.dali import fn, pipeline_def, types

    path, expected = make_cifar10(tmp_path)
    write_dataset(load_dataset("cifar10", source=path), tmp_path / "out", seed=3, shard_size=8)
    root = tmp_path / "out" / "cifar10"
    manifest = formats.load_manifest(root)
    for split, info in manifest.splits.items():
        shards = manifest.shard_paths(root, split)

        @pipeline_def(batch_size=info.samples, num_threads=1, device_id=None)
        def pipeline(shards: list[Path] = shards):  # type: ignore[no-untyped-def]
            rgb, lbl = fn.readers.webdataset(
                paths=[str(p) for p in shards],
                index_paths=[str(formats.index_path(p)) for p in shards],
                ext=["rgb", "lbl"],
                dtypes=[types.UINT8, types.INT32],
                random_shuffle=False,
                name="reader",
            )
            return rgb, lbl

        pipe = pipeline()
        pipe.build()
        assert pipe.epoch_size("reader") == info.samples
        rgb, lbl = pipe.run()
        found = []
        for i in range(info.samples):
            labels = np.array(lbl[i])
            assert labels.dtype == np.int32 and labels.shape == (3,)
            found.append((np.array(rgb[i]).tobytes(), int(labels[0]), int(labels[1])))
        assert sorted(found) == expected.samples(split)
        assert sorted(int(np.array(lbl[i])[2]) for i in range(info.samples)) == list(range(info.samples))


def test_imagefolder_folder_and_archive_give_identical_shards(tmp_path: Path) -> None:
    root, expected = make_imagefolder(tmp_path / "src")
    archive = tar_tree(root, tmp_path / "src" / "pets.tar.gz")
    a = run_ssrr("shard", "imagefolder", root, "--out", tmp_path / "a", "--workers", "1")
    b = run_ssrr("shard", "imagefolder", "--source", archive, "--out", tmp_path / "b")
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    shards_a = {k: v for k, v in _shard_hashes(tmp_path / "a" / "pets").items() if k != "manifest.json"}
    shards_b = {k: v for k, v in _shard_hashes(tmp_path / "b" / "pets").items() if k != "manifest.json"}
    assert shards_a == shards_b  # default name: the folder / archive stem
    manifest = formats.load_manifest(tmp_path / "b" / "pets")
    assert manifest.classes == ["bird", "cat", "dog"] and manifest.image_size == (16, 16)
    assert manifest.source["sha256"] == sha256_file(archive)
    for split in ("train", "test"):
        assert shard_samples(tmp_path / "b" / "pets", split) == expected.samples(split)
    named = run_ssrr("shard", "imagefolder", archive, "--name", "my-pets", "--size", "8", "--out", tmp_path / "c")
    assert named.exit_code == 0, named.output
    assert formats.load_manifest(tmp_path / "c" / "my-pets").image_size == (8, 8)


def test_same_seed_same_bytes_other_seed_other_order(tmp_path: Path) -> None:
    path, _ = make_cifar10(tmp_path)
    for out, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        result = run_ssrr("shard", "cifar10", "--source", path, "--out", tmp_path / out, "--seed", seed)
        assert result.exit_code == 0, result.output
    a, b, c = (_shard_hashes(tmp_path / out / "cifar10") for out in "abc")
    assert a.pop("manifest.json") != b.pop("manifest.json")  # it records the command, which names --out
    assert a == b  # byte-identical shards and indexes
    assert a["train-000000.tar"] != c["train-000000.tar"]
    order = {out: [img.tobytes() for _, img, _ in iter_samples(tmp_path / out / "cifar10", "train")] for out in "ac"}
    assert order["a"] != order["c"] and sorted(order["a"]) == sorted(order["c"])


def test_interrupted_write_leaves_nothing_and_keeps_the_old_dataset(tmp_path: Path) -> None:
    path, _ = make_cifar10(tmp_path)
    out = tmp_path / "out"
    arrays = load_dataset("cifar10", source=path)
    write_dataset(arrays, out, seed=0, shard_size=4)
    before = _shard_hashes(out / "cifar10")
    calls = []

    def explode(split: str, count: int) -> None:
        calls.append(count)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C midway

    with pytest.raises(KeyboardInterrupt):
        write_dataset(arrays, out, seed=1, shard_size=4, progress=explode)
    assert _shard_hashes(out / "cifar10") == before
    assert sorted(p.name for p in out.iterdir()) == ["cifar10"]  # no staging folder left behind

    def fail(split: str, count: int) -> None:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_dataset(arrays, tmp_path / "fresh", progress=fail)
    assert list((tmp_path / "fresh").iterdir()) == []


def test_verify_passes_then_names_the_damaged_shard(tmp_path: Path) -> None:
    path, _ = make_cifar10(tmp_path)
    out = tmp_path / "out"
    assert run_ssrr("shard", "cifar10", "--source", path, "--out", out, "--shard-size", "9").exit_code == 0
    root = out / "cifar10"
    assert verify_dataset(root) == []
    ok = run_ssrr("shard", "verify", root)
    assert ok.exit_code == 0, ok.output
    assert "OK" in ok.output
    shard = root / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    data[512 + 100] ^= 0x01  # one pixel byte of the first sample
    shard.write_bytes(bytes(data))
    problems = verify_dataset(root)
    assert len(problems) == 1 and problems[0].startswith("train-000001.tar: sha256")
    bad = run_ssrr("shard", "verify", root)
    assert bad.exit_code == 1
    assert "train-000001.tar" in bad.output
    (line,) = error_lines(bad)
    assert "1 problem(s) in train-000001.tar" in line


def test_verify_finds_structural_problems(tmp_path: Path) -> None:
    path, _ = make_cifar10(tmp_path)
    write_dataset(load_dataset("cifar10", source=path), tmp_path, shard_size=10)
    root = tmp_path / "cifar10"
    manifest = json.loads((root / "manifest.json").read_text())
    # rewrite one shard with a sample whose label is out of range and a missing .cls, and fix its hash
    shard = root / "test-000000.tar"
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]  # type: ignore[union-attr]
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for member, payload in members:
            if member.name.endswith("000000001.cls"):
                continue
            if member.name.endswith("000000000.lbl"):
                payload = formats.encode_labels(42, -1, 0)
            member.size = len(payload)
            tar.addfile(member, io.BytesIO(payload))
    manifest["splits"]["test"]["shards"][0]["sha256"] = sha256_file(shard)
    (root / "manifest.json").write_text(json.dumps(manifest))
    (root / "train-000001.tar").unlink()
    problems = "\n".join(verify_dataset(root))
    assert "test-000000.tar: test-000000000: fine label 42 outside 0..9" in problems
    assert "test-000000.tar: test-000000001: no .cls member" in problems
    assert "test-000000.idx: does not match" in problems
    assert "train-000001.tar: missing" in problems
    assert "train: 10 indices of 0..29 missing" in problems


def test_info_table_and_json(tmp_path: Path) -> None:
    result = run_ssrr("shard", "synthetic", "--out", tmp_path, "--train-per-class", "3", "--test-per-class", "2")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "synthetic" / "manifest.json").read_text())
    assert manifest["source"] == {"generator": "ssrr.synthetic", "seed": 0}
    assert manifest["splits"]["train"]["samples"] == 30 and manifest["splits"]["test"]["samples"] == 20
    table = run_ssrr("shard", "info", tmp_path / "synthetic")
    assert table.exit_code == 0 and "hollow-square" in table.output and "ssrr.synthetic" in table.output
    as_json = run_ssrr("shard", "info", tmp_path / "synthetic", "--json")
    assert as_json.exit_code == 0 and json.loads(as_json.stdout) == manifest
    missing = run_ssrr("shard", "info", tmp_path / "nothing")
    assert missing.exit_code == 1 and len(error_lines(missing)) == 1


def test_help_has_examples() -> None:
    for command in ([], ["make"], ["verify"], ["info"]):
        result = run_ssrr("shard", *command, "--help")
        assert result.exit_code == 0 and "ssrr shard" in result.output and "Example" in result.output


REAL_ARCHIVE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10-jpeg.tar.gz"


@pytest.mark.slow
@pytest.mark.skipif(not REAL_ARCHIVE.is_file(), reason="needs ../shared/data/cifar10-jpeg.tar.gz")
def test_real_cifar10_jpeg(tmp_path: Path) -> None:
    result = run_ssrr("shard", "imagefolder", REAL_ARCHIVE, "--name", "cifar10-jpeg", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    manifest = formats.load_manifest(tmp_path / "cifar10-jpeg")
    assert manifest.image_size == (32, 32)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert manifest.classes == classes
    assert {s: i.samples for s, i in manifest.splits.items()} == {"train": 50_000, "test": 10_000}
    assert all(abs(m - r) < 0.01 for m, r in zip(manifest.mean, (0.491, 0.482, 0.447), strict=True))
    assert verify_dataset(tmp_path / "cifar10-jpeg") == []
