"""The shard benchmark runs end to end on a small archive and reports every figure."""

from __future__ import annotations

from pathlib import Path

from fixtures_data import make_imagefolder, tar_tree

from ssrr.bench.shard import bench_shard


def test_bench_shard_small(tmp_path: Path) -> None:
    root, _ = make_imagefolder(tmp_path / "src")
    archive = tar_tree(root, tmp_path / "src" / "pets.tar.gz")
    result = bench_shard(archive, tmp_path / "out", repeats=1, workers=1, decode_sample=8)
    assert result["shard"]["images"] == 16 and len(result["shard"]["wall_s"]) == 1
    assert result["shard"]["images_per_s"] > 0
    rates = result["decode"]["images_per_s"]
    assert set(rates) == {"raw", "png", "jpeg"} and all(v > 0 for v in rates.values())
    assert result["decode"]["bytes_per_image"]["raw"] == 16 * 16 * 3
    assert result["dali_raw"] is None or result["dali_raw"]["images_per_s"] > 0
    assert list((tmp_path / "out").iterdir()) == []  # the scratch shards are removed
