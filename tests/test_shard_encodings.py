"""Encoded shards (jpeg, png, webp) and shards cut by bytes: codec, writer defaults, CLI, info and verify."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from fixtures_data import error_lines, run_ssrr
from PIL import Image

from ssrr.data import codec, formats
from ssrr.data.sizing import cut_shards, parse_bytes, split_shard_bytes
from ssrr.data.sources import load_dataset
from ssrr.data.writer import DatasetArrays, SplitArrays, iter_samples, write_dataset
from ssrr.errors import SsrrError


def smooth(n: int, side: int, seed: int = 0) -> np.ndarray:
    """Images with natural-ish statistics: low-frequency colour fields plus mild noise."""
    rng = np.random.default_rng(seed)
    grid = rng.uniform(0, 255, (n, 3, 3, 3)).astype(np.float32)
    fields = np.stack(
        [np.asarray(Image.fromarray(g.astype(np.uint8)).resize((side, side), Image.BILINEAR)) for g in grid]
    )
    noise = rng.normal(0, 4, fields.shape)
    return np.clip(fields + noise, 0, 255).astype(np.uint8)


def image_folder(root: Path, side: int, fmt: str, per_class: int = 6, quality: int = 90) -> Path:
    """``root/{train,test}/{a,b}/NNNN.<fmt>`` of side x side images."""
    images = smooth(4 * per_class, side, seed=side)
    i = 0
    for split in ("train", "test"):
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True, exist_ok=True)
            for n in range(per_class):
                options = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
                path = root / split / label / f"{n:04d}.{fmt.lower()}"
                Image.fromarray(images[i]).save(path, format=fmt, **options)
                i += 1
    return root


def members(shard: Path) -> dict[str, bytes]:
    with tarfile.open(shard) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------------- codec


@pytest.mark.parametrize("encoding", ["png", "jpeg", "webp"])
def test_codec_round_trip_and_structure_checks(encoding: str) -> None:
    image = smooth(1, 40)[0]
    data = codec.encode(image, encoding, quality=95)
    assert codec.encode(image, encoding, quality=95) == data  # deterministic
    assert codec.probe_size(data) == (40, 40)
    assert codec.structure_problem(data, encoding, (40, 40)) is None
    decoded = codec.decode(data, encoding, (40, 40))
    error = np.abs(decoded.astype(int) - image).mean()
    assert (
        error == 0 if encoding == "png" else 0 < error < 5
    )  # the images carry pixel noise: JPEG and WebP smooth some away
    assert "truncated" in (codec.structure_problem(data[:-40], encoding, (40, 40)) or "")
    assert "signature" in (codec.structure_problem(b"\0" * 8 + data[8:], encoding, (40, 40)) or "")
    assert "expected 32x40" in (codec.structure_problem(data, encoding, (40, 32)) or "")
    with pytest.raises(ValueError, match="expected 32x40"):
        codec.decode(data, encoding, (40, 32))


def test_default_encoding_rules() -> None:
    assert codec.default_encoding(32, frozenset({"JPEG"})) == codec.RAW
    assert codec.default_encoding(64, frozenset()) == codec.RAW
    assert codec.default_encoding(96, frozenset({"JPEG"})) == "jpeg"
    assert codec.default_encoding(96, frozenset({"WEBP"})) == "webp"
    assert codec.default_encoding(96, frozenset({"PNG"})) == "png"
    assert codec.default_encoding(96, frozenset()) == "png"  # pixel arrays are lossless: stay lossless
    assert codec.default_encoding(96, frozenset({"PNG", "BMP"})) == "png"
    assert codec.default_encoding(96, frozenset({"PNG", "JPEG"})) == "jpeg"
    with pytest.raises(SsrrError, match="unknown encoding 'gif'"):
        codec.get("gif")


def test_shard_bytes_parsing_and_cutting() -> None:
    assert parse_bytes("256MB") == 256_000_000
    assert parse_bytes("1GB") == 10**9
    assert parse_bytes("1.5gb") == 1_500_000_000
    assert parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("123456") == 123456
    for bad in ("lots", "12XB", "-5MB", "0", "auto"):
        with pytest.raises(SsrrError, match="--shard-bytes"):
            parse_bytes(bad)
    # a tar adds two zero blocks and pads to a whole 10240-byte record: 4 samples of 4096 fit in 20480, not 5
    assert cut_shards([4096] * 10, 20480, None) == [(0, 4), (4, 8), (8, 10)]
    assert cut_shards([4096] * 10, 20480, 3) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert cut_shards([512, 50_000, 512], 20480, None) == [(0, 1), (1, 2), (2, 3)]  # a large sample alone
    assert split_shard_bytes(256_000_000, 10**12) == 256_000_000
    assert split_shard_bytes(256_000_000, 160_000_000) == 20_000_000  # 8 shards, whatever the bound
    assert split_shard_bytes(10_000_000, 160_000_000) == 10_000_000  # the bound gives more
    assert split_shard_bytes(256_000_000, 1000) == 4_000_000  # a tiny split: one shard


# --------------------------------------------------------------------------------------------- writer


def arrays(n: int = 40, side: int = 24) -> DatasetArrays:
    rng = np.random.default_rng(1)
    train = SplitArrays(smooth(n, side), rng.integers(0, 3, n), np.full(n, -1))
    test = SplitArrays(smooth(n // 4, side, seed=9), rng.integers(0, 3, n // 4), np.full(n // 4, -1))
    return DatasetArrays("enc", {"train": train, "test": test}, ["x", "y", "z"], [], {"path": "test"})


@pytest.mark.parametrize("encoding", ["jpeg", "png", "webp"])
def test_encoded_shards_reproducible_and_read_back(encoding: str, tmp_path: Path) -> None:
    data = arrays()
    first = write_dataset(data, tmp_path / "a", seed=2, encoding=encoding, shard_bytes=20_000, workers=2)
    second = write_dataset(data, tmp_path / "b", seed=2, encoding=encoding, shard_bytes=20_000, workers=1)
    assert first.encoding == encoding and len(first.splits["train"].shards) > 1
    assert [s.sha256 for s in first.splits["train"].shards] == [s.sha256 for s in second.splits["train"].shards]
    assert all(s.bytes <= 20_000 for s in first.splits["train"].shards)
    assert first.quality == (95 if encoding != "png" else None) and first.shard_bytes == 20_000
    root = tmp_path / "a" / "enc"
    names = members(root / "train-000000.tar")
    assert {name.rpartition(".")[2] for name in names} == {codec.ENCODINGS[encoding].ext, "lbl"}  # no 1 KB .cls
    read = sorted(iter_samples(root, "train"), key=lambda r: r[2][2])
    manifest_again = formats.load_manifest(root)
    assert manifest_again.encoding == encoding and len(read) == 40
    rng = np.random.default_rng(2)  # the writer's shuffle: one permutation per split, in sorted split order
    rng.permutation(10)
    order = rng.permutation(40)
    pixels = np.stack([image for _, image, _ in read]).astype(int)
    error = np.abs(pixels - data.splits["train"].images[order]).mean()
    assert error == 0 if encoding == "png" else error < 5
    assert run_ssrr("shard", "verify", root).exit_code == 0


def test_raw_manifest_records_encoding_and_bound_but_no_quality(tmp_path: Path) -> None:
    write_dataset(arrays(), tmp_path, encoding="raw")
    data = json.loads((tmp_path / "enc" / "manifest.json").read_text())
    assert data["encoding"] == "raw-uint8-hwc" and "quality" not in data
    assert data["shard_bytes"] == 256_000_000 and data["shard_size"] is None


def test_source_jpegs_are_stored_unchanged_unless_a_quality_is_asked(tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "src", side=80, fmt="JPEG")
    data = load_dataset("imagefolder", source=folder, name="big")
    manifest = write_dataset(data, tmp_path / "out")
    assert manifest.encoding == "jpeg"  # default above 64 px for a JPEG source
    files = {hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*.jpeg")}
    stored = [
        hashlib.sha256(blob).hexdigest()
        for shard in (tmp_path / "out" / "big").glob("*.tar")
        for name, blob in members(shard).items()
        if name.endswith(".jpg")
    ]
    assert len(stored) == 24 and set(stored) == files  # byte for byte: no re-encoding
    assert manifest.source_files_kept == 24
    shown = " ".join(run_ssrr("shard", "info", tmp_path / "out" / "big").output.replace("│", " ").split())
    assert "jpeg, quality 95 (24 of 24 source files stored unchanged)" in shown
    requantised = write_dataset(data, tmp_path / "q", quality=50)
    assert requantised.quality == 50 and requantised.source_files_kept == 0
    sizes = sum(s.bytes for s in requantised.splits["train"].shards)
    assert sizes < sum(s.bytes for s in manifest.splits["train"].shards)


def test_lossless_sources_stay_lossless_and_small_images_stay_raw(tmp_path: Path) -> None:
    png = load_dataset("imagefolder", source=image_folder(tmp_path / "png", side=72, fmt="PNG"), name="p")
    assert write_dataset(png, tmp_path / "out").encoding == "png"
    small = load_dataset("imagefolder", source=image_folder(tmp_path / "small", side=32, fmt="JPEG"), name="s")
    assert write_dataset(small, tmp_path / "out").encoding == codec.RAW
    with pytest.raises(SsrrError, match="unknown encoding"):
        write_dataset(small, tmp_path / "out", encoding="bmp")


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_imagefolder_jpeg_by_bytes_then_info_and_verify(tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "src", side=96, fmt="PNG", per_class=10)
    out = tmp_path / "shards"
    args = ["shard", "imagefolder", folder, "--name", "n96", "--out", out, "--encoding", "jpeg"]
    result = run_ssrr(*args, "--shard-bytes", "40KB", "--quality", "90")
    assert result.exit_code == 0, result.output
    root = out / "n96"
    manifest = formats.load_manifest(root)
    assert manifest.encoding == "jpeg" and manifest.quality == 90 and manifest.shard_bytes == 40_000
    assert len(manifest.splits["train"].shards) >= 3
    assert "--encoding jpeg" in manifest.command and "--shard-bytes 40KB" in manifest.command
    info = run_ssrr("shard", "info", root)
    assert info.exit_code == 0 and "jpeg, quality 90" in info.output and "40.0 KB" in info.output
    assert json.loads(run_ssrr("shard", "info", root, "--json").output)["encoding"] == "jpeg"
    assert run_ssrr("shard", "verify", root).exit_code == 0
    # overwrite the start of one image's JPEG segments (its signature and end marker survive)
    shard = root / manifest.splits["train"].shards[1].file
    line = formats.index_path(shard).read_text().splitlines()[2].split()
    offset, name = int(line[1]), line[3]
    with open(shard, "r+b") as handle:
        handle.seek(offset + 2)
        handle.write(b"garbage" * 4)
    result = run_ssrr("shard", "verify", root)
    assert result.exit_code == 1
    problems = [line for line in result.output.splitlines() if line.startswith("problem")]
    assert any(shard.name in line and name.partition(".")[0] in line and "header" in line for line in problems)
    bad = run_ssrr(*args, "--shard-bytes", "lots")
    assert bad.exit_code == 1 and "--shard-bytes 'lots'" in error_lines(bad)[0]
    unknown = run_ssrr("shard", "imagefolder", folder, "--name", "x", "--out", out, "--encoding", "gif")
    assert unknown.exit_code == 1 and "unknown encoding 'gif'" in error_lines(unknown)[0]
    assert not (out / "x").exists()
