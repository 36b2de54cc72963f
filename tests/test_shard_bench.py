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


def test_bench_encodings_small(tmp_path: Path) -> None:
    from ssrr.bench.encodings import bench_encodings

    root, _ = make_imagefolder(tmp_path / "src")
    archive = tar_tree(root, tmp_path / "src" / "pets.tar.gz")
    result = bench_encodings(
        archive, tmp_path / "out", side=72, per_class=5, k=2, batch=4, threads=1, workers=1, steps=1, repeats=1
    )
    assert result["source"]["images"] == 10 + 3 and result["source"]["side"] == 72  # 5 train, 1 test a class
    sizes = {name: entry["bytes"] for name, entry in result["encodings"].items()}
    assert set(sizes) == {"raw", "jpeg", "png", "webp"}
    assert sizes["jpeg"] < sizes["png"] < sizes["raw"]  # upscaled JPEGs: smooth, so PNG beats raw too
    jpeg = result["encodings"]["jpeg"]
    assert jpeg["ratio_to_source"] == round(jpeg["bytes"] / result["source"]["bytes"], 2)
    assert all(entry["views_per_s"] > 0 and entry["write_s"] >= 0 for entry in result["encodings"].values())
    assert set(result["decode_strategy"]) == {f"k{k}_{w}_images_per_s" for k in (1, 2, 4) for w in ("once", "fused")}
    assert list((tmp_path / "out").iterdir()) == []  # scratch removed
