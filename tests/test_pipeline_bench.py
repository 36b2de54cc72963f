"""bench_pipeline: the side-by-side benchmark runs and reports its fields (a tiny smoke run, not a timing)."""

from __future__ import annotations

from pathlib import Path

import pytest
from ssrr.pipelines.synthetic import write_synthetic

from ssrr.bench.pipeline import bench_pipeline


@pytest.fixture(scope="module")
def pipe_bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("pipe"), "bench", train=64, test=8, shard_size=32)


def test_bench_pipeline_reports(pipe_bench: Path) -> None:
    result = bench_pipeline(pipe_bench, k=2, batch=4, repeats=2, steps=2, workers=0, baseline_steps=1)
    for key in ("views_per_s", "baseline_views_per_s", "ratio", "k", "batch", "device", "repeats"):
        assert key in result
    assert result["k"] == 2 and result["batch"] == 4 and result["device"] == "cpu" and result["repeats"] == 2
    assert set(result["baselines"]) == {"pil", "tv2"}
    assert len(result["dali_runs"]) == len(result["baseline_runs"]["pil"]) == len(result["baseline_runs"]["tv2"]) == 2
    assert result["views_per_s"] > 0 and result["baseline_views_per_s"] > 0
    assert result["baseline_views_per_s"] == max(result["baselines"].values())  # the headline: the faster one
    assert result["baselines"][result["baseline"]] == result["baseline_views_per_s"]
    assert result["ratio"] == pytest.approx(result["views_per_s"] / result["baseline_views_per_s"])


def test_bench_pipeline_without_baseline(pipe_bench: Path) -> None:
    result = bench_pipeline(pipe_bench, k=2, batch=4, repeats=1, steps=1, baseline=False)
    assert result["baseline_views_per_s"] is None and result["ratio"] is None and result["views_per_s"] > 0


def test_bench_methods_times_every_method_beside_relational(tmp_path: Path) -> None:
    from ssrr.bench.methods import DEFAULT_METHODS, bench_methods
    from ssrr.data.sources import load_dataset
    from ssrr.data.writer import write_dataset

    write_dataset(load_dataset("synthetic", train_per_class=12, test_per_class=2), tmp_path)
    result = bench_methods(tmp_path / "synthetic", backbone="conv4", k=3, m=8, steps=1, repeats=2, warmup=1)
    assert set(result["methods"]) == set(DEFAULT_METHODS) and result["repeats"] == 2
    views = {name: r["views_per_image"] for name, r in result["methods"].items()}
    assert views == {"relational": 3, "simclr": 2, "rotation": 4, "deepcluster": 1, "infomax": 1, "supervised": 1}
    for name, r in result["methods"].items():
        assert len(r["runs"]) == 2 and r["views_per_s"] > 0
        assert r["images_per_s"] == pytest.approx(r["views_per_s"] / views[name])
        assert result["ratio_to_relational"][name] == pytest.approx(
            r["views_per_s"] / result["methods"]["relational"]["views_per_s"]
        )
    assert result["cluster_s"] > 0


def test_bench_time_to_accuracy_runs_every_seed_both_ways_and_times_the_target(tmp_path: Path) -> None:
    from ssrr.bench.accuracy import bench_time_to_accuracy
    from ssrr.data.sources import load_dataset
    from ssrr.data.writer import write_dataset

    write_dataset(load_dataset("synthetic", train_per_class=4, test_per_class=2), tmp_path)
    result = bench_time_to_accuracy(
        tmp_path / "synthetic", k=2, m=10, epochs=1, seeds=(1, 2), linear_epochs=1, target_top1=0.0, probe_steps=1
    )
    assert result["seeds"] == [1, 2] and len(result["curves"]) == len(result["baseline_curves"]) == 2
    assert result["probe_every_steps"] == 1 and result["probe_split"] == "test"  # 4 steps an epoch: 4 probes
    for curves in (result["curves"], result["baseline_curves"]):
        for curve in curves:  # probed after each of the epoch's 4 steps, pretraining time growing
            assert len(curve["top1"]) == 4 and 0 < curve["seconds"][0] < curve["seconds"][1] < curve["seconds"][3]
    finals = [curve["top1"][-1] for curve in result["curves"]]
    assert result["top1_mean"] == pytest.approx(sum(finals) / 2)
    assert result["top1_std"] == pytest.approx(abs(finals[0] - finals[1]) / 2**0.5)
    assert 0 <= result["baseline_top1_mean"] <= 100 and result["baseline_top1_std"] >= 0
    assert result["wall_s"] > 0 and result["baseline_wall_s"] > 0
    assert result["time_to_target_s"] == pytest.approx(sum(c["seconds"][0] for c in result["curves"]) / 2)
    assert result["baseline_time_to_target_s"] > 0
    settings = result["baseline_settings"]
    assert settings["best"] in [{key: row[key] for key in settings["best"]} for row in settings["tried"]]
    assert {row["channels_last"] for row in settings["tried"]} == {False, True}  # both memory formats tried
    assert result["wall_ratio"] == pytest.approx(result["baseline_wall_s"] / result["wall_s"])


def test_bench_e2e_tunes_the_baseline_times_its_parts_and_counts_flops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ssrr.bench.baseline as baseline_module
    from ssrr.bench.e2e import bench_e2e
    from ssrr.data.sources import load_dataset
    from ssrr.data.writer import write_dataset

    reads: list[str] = []

    class CountedViews(baseline_module.ReferenceViews):
        def __init__(self, shard_dir: Path, split: str, *args: object, **kwargs: object) -> None:
            reads.append(split)
            super().__init__(shard_dir, split, *args, **kwargs)

    monkeypatch.setattr(baseline_module, "ReferenceViews", CountedViews)
    write_dataset(load_dataset("synthetic", train_per_class=6, test_per_class=1), tmp_path)
    result = bench_e2e(
        tmp_path / "synthetic", k=2, m=8, steps=2, repeats=2, warmup=1, baseline_steps=1, max_workers=1, max_threads=1
    )
    tried = result["baseline_settings"]["tried"]
    settings = [(row["workers"], row["threads"], row["channels_last"]) for row in tried]
    assert settings == [(0, 1, False), (0, 1, True), (1, 1, False), (1, 1, True)]  # both memory formats
    best = max(tried, key=lambda row: row["views_per_s"])
    assert result["baseline_settings"]["best"] == {key: best[key] for key in ("workers", "threads", "channels_last")}
    assert len(result["runs"]) == len(result["baseline_runs"]) == 2  # the same repeats on both sides
    assert result["ratio"] == pytest.approx(result["views_per_s"] / result["baseline_views_per_s"])
    assert result["authors_views_per_s"] > 0 and reads == ["train"]  # both public-code sides share one read
    assert result["baseline_loader_views_per_s"] > 0 and result["baseline_step_s"] > 0
    parts = result["baseline_parts_predict"]
    assert parts["serial_views_per_s"] <= parts["overlapped_views_per_s"]
    assert isinstance(result["baseline_suspect"], bool)
    assert result["step_s"] > 0 and result["loader_views_per_s"] > 0  # ours' parts beside the whole
    ours = result["parts_predict"]
    assert ours["serial_views_per_s"] <= ours["overlapped_views_per_s"]
    assert ours["overhead"] == pytest.approx(1 - result["views_per_s"] / ours["overlapped_views_per_s"])
    assert result["thread_plan"]["source"] in ("measured", "cached")  # the plan `ssrr pretrain` would pick
    authors = result["authors_settings"]
    assert [(row["workers"], row["channels_last"]) for row in authors["tried"]] == [(1, False)] * len(authors["tried"])
    assert authors["precision"] == "fp32" and authors["code"] == "transcription" and len(result["authors_runs"]) == 2
    assert result["ratio_to_authors"] == pytest.approx(result["views_per_s"] / result["authors_views_per_s"])
    limit = result["step_limit"]
    assert limit["step_gflop"] > 0 and limit["peak_gflops"] > 0 and limit["fraction_of_peak"] > 0
