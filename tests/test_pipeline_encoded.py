"""Encoded shards through the DALI pipeline on the CPU: parity with raw pixels, corrupt samples, ranks, training."""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_data import run_ssrr
from ssrr.pipelines import recipes
from ssrr.pipelines.loader import ViewLoader
from ssrr.pipelines.synthetic import synthetic_images

from ssrr.data import codec, formats
from ssrr.data.writer import DatasetArrays, SplitArrays, write_dataset
from ssrr.errors import SsrrError

SIDE = 48


def source(encoding: str, train: int = 48, test: int = 16, seed: int = 0) -> DatasetArrays:
    """Images given as files in `encoding` (kept byte for byte) and as their Pillow decode (the raw pixels)."""
    rng = np.random.default_rng(seed)

    def split(n: int) -> SplitArrays:
        fine = rng.integers(0, 3, n)
        blobs = [codec.encode(image, encoding) for image in synthetic_images("smooth", n, SIDE, rng, fine, fine)]
        pixels = np.stack([codec.decode(blob, encoding, (SIDE, SIDE)) for blob in blobs])
        pillow = codec.ENCODINGS[encoding].pillow
        return SplitArrays(pixels, fine, np.full(n, -1), list(blobs), frozenset({pillow or ""}))

    return DatasetArrays("enc", {"train": split(train), "test": split(test)}, ["a", "b", "c"], [], {"path": "t"})


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """For each encoding: (raw shards, encoded shards) of the same decoded pixels, shuffled alike."""
    out = tmp_path_factory.mktemp("encoded")
    folders = {}
    for encoding in ("jpeg", "png", "webp"):
        data = source(encoding)
        write_dataset(data, out / f"{encoding}-raw", seed=1, encoding="raw", shard_size=20)
        write_dataset(data, out / encoding, seed=1, encoding=encoding, shard_size=20)
        folders[encoding] = (out / f"{encoding}-raw" / "enc", out / encoding / "enc")
    return folders


def views(root: Path, recipe: recipes.Recipe, training: bool, **options) -> torch.Tensor:
    loader = ViewLoader(root, recipe, batch_size=16, training=training, num_threads=1, **options)
    return torch.cat([batch.views for batch in loader.epoch(0)])


@pytest.mark.parametrize("encoding", ["jpeg", "png", "webp"])
@pytest.mark.parametrize("recipe", ["evaluation", "relational", "simclr"])
def test_decoded_views_match_the_raw_path(pairs: dict[str, tuple[Path, Path]], encoding: str, recipe: str) -> None:
    """DALI's CPU decoder gives Pillow's pixels (up to a level or two), so every view matches the raw path's."""
    make = {"evaluation": recipes.evaluation, "relational": lambda: recipes.relational(4), "simclr": recipes.simclr}
    raw_dir, encoded_dir = pairs[encoding]
    assert formats.load_manifest(encoded_dir).encoding == encoding
    training = recipe != "evaluation"
    raw = views(raw_dir, make[recipe](), training)
    decoded = views(encoded_dir, make[recipe](), training)
    assert raw.shape == decoded.shape and len(raw) >= 32
    std255 = torch.tensor(formats.load_manifest(raw_dir).std).view(1, 3, 1, 1) * 255
    levels = (raw - decoded).abs() * std255  # back in uint8 levels
    assert levels.max() <= 2.0 and levels.mean() <= 0.1


def test_views_also_resize_from_decoded_images(pairs: dict[str, tuple[Path, Path]]) -> None:
    raw_dir, encoded_dir = pairs["jpeg"]
    raw = views(raw_dir, recipes.evaluation(), False, image_size=32)
    decoded = views(encoded_dir, recipes.evaluation(), False, image_size=32)
    assert decoded.shape[-2:] == (32, 32) and torch.allclose(raw, decoded, atol=0.05)


def _member(shard: Path, row: int, ext: str) -> tuple[int, int, str]:
    tokens = formats.index_path(shard).read_text().splitlines()[1 + row].split()
    j = tokens.index(ext)
    return int(tokens[j + 1]), int(tokens[j + 2]), tokens[j + 3].partition(".")[0]


def test_truncated_image_named_or_skipped(pairs: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    root = Path(shutil.copytree(pairs["jpeg"][1], tmp_path / "copy"))
    shard = root / "train-000001.tar"
    offset, size, key = _member(shard, 4, "jpg")
    with open(shard, "r+b") as handle:  # as if the image had been cut short: no end marker
        handle.seek(offset + size - 2)
        handle.write(b"\0\0")
    with pytest.raises(SsrrError) as error:
        ViewLoader(root, recipes.evaluation(), training=False)
    message = str(error.value)
    assert "\n" not in message and "train-000001.tar" in message and key in message and "end marker" in message
    loader = ViewLoader(root, recipes.evaluation(), batch_size=16, training=False, skip_corrupt=True)
    assert loader.skipped == 1 and any(key in p for p in loader.problems)
    seen = [i for batch in loader.epoch(0) for i in batch.index[batch.valid].tolist()]
    assert len(seen) == len(set(seen)) == 47


def test_undecodable_image_named_at_run_time_or_skipped(pairs: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    """A PNG whose compressed data is damaged passes the cheap checks; DALI's failure still names the sample."""
    root = Path(shutil.copytree(pairs["png"][1], tmp_path / "copy"))
    shard = root / "train-000002.tar"
    offset, size, key = _member(shard, 3, "png")
    with open(shard, "r+b") as handle:
        handle.seek(offset)
        data = bytearray(handle.read(size))
        start = data.index(b"IDAT") + 4
        data[start + 10 : start + 40] = bytes(30)  # damage the deflate stream, then fix the chunk's CRC
        length = int.from_bytes(data[start - 8 : start - 4], "big")
        crc = zlib.crc32(bytes(data[start - 4 : start + length]))
        data[start + length : start + length + 4] = crc.to_bytes(4, "big")
        handle.seek(offset)
        handle.write(data)
    loader = ViewLoader(root, recipes.evaluation(), batch_size=16, training=False)
    assert loader.skipped == 0  # the structure is intact
    with pytest.raises(SsrrError) as error:
        list(loader.epoch(0))
    message = str(error.value)
    assert "\n" not in message and "train-000002.tar" in message and key in message
    skipping = ViewLoader(root, recipes.evaluation(), batch_size=16, training=False, skip_corrupt=True)
    assert skipping.skipped == 1 and key in skipping.problems[0]
    assert sum(int(batch.valid.sum()) for batch in skipping.epoch(0)) == 47


def test_byte_sized_shards_split_exactly_between_ranks(tmp_path: Path) -> None:
    manifest = write_dataset(source("jpeg", train=90, test=8), tmp_path, encoding="jpeg", shard_bytes=30_000)
    shards = manifest.splits["train"].shards
    assert len(shards) >= 4 and all(s.bytes <= 30_000 for s in shards)
    root = tmp_path / "enc"
    seen = []
    for rank in range(2):
        loader = ViewLoader(root, recipes.evaluation(), batch_size=16, training=False, rank=rank, world_size=2)
        seen += [i for batch in loader.epoch(0) for i in batch.index[batch.valid].tolist()]
    assert sorted(seen) == list(range(90))
    training = [
        {
            i
            for batch in ViewLoader(root, recipes.relational(2), batch_size=8, rank=r, world_size=2).epoch(0)
            for i in batch.index.tolist()
        }
        for r in range(2)
    ]
    assert not training[0] & training[1] and len(training[0]) == len(training[1]) == 40


def test_pretrain_and_linear_eval_read_jpeg_shards(tmp_path: Path) -> None:
    write_dataset(source("jpeg", train=64, test=16), tmp_path / "shards", encoding="jpeg")
    data = tmp_path / "shards" / "enc"
    result = run_ssrr(
        "pretrain", "--dataset", data, "--backbone", "conv4", "--k", "2", "--batch", "16", "--epochs", "1",
        "--max-steps", "2", "--out", tmp_path / "runs", "--name", "jpeg", "--device", "cpu", "--num-threads", "1",
        "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "jpeg"
    assert (run / "backbone.safetensors").is_file()
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()][-1] == 2
    args = ["eval", "linear", run, "--dataset", data, "--epochs", "1", "--device", "cpu", "--out", tmp_path, "--json"]
    evaluated = run_ssrr(*args)
    assert evaluated.exit_code == 0, evaluated.output
    assert 0 <= json.loads(evaluated.stdout.strip().splitlines()[-1])["top1"] <= 100


@pytest.mark.gpu
def test_nvjpeg_mixed_decoder_matches_the_cpu_decoder(pairs: dict[str, tuple[Path, Path]]) -> None:
    """device="cuda": JPEG shards decode on the GPU (nvJPEG, DALI's mixed decoder) to the CPU decoder's pixels up to
    a few levels (different IDCT and chroma upsampling), views on the device."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    encoded_dir = pairs["jpeg"][1]
    gpu = next(
        iter(ViewLoader(encoded_dir, recipes.evaluation(), batch_size=16, training=False, device="cuda").epoch(0))
    )
    cpu = next(iter(ViewLoader(encoded_dir, recipes.evaluation(), batch_size=16, training=False).epoch(0)))
    assert gpu.views.is_cuda and torch.equal(gpu.index.cpu(), cpu.index)
    std255 = torch.tensor(formats.load_manifest(encoded_dir).std).view(1, 3, 1, 1) * 255
    levels = (gpu.views.cpu().float() - cpu.views).abs() * std255
    assert levels.mean() < 1.0 and levels.max() <= 8
