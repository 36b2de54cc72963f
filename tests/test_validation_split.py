"""The validation split (`ssrr shard ... --val N`), training on train+val, and which split the probes score."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fixtures_data import error_lines, run_ssrr
from ssrr.pipelines import recipes
from ssrr.pipelines.loader import ViewLoader

from ssrr.config import RunConfig
from ssrr.data.formats import load_manifest
from ssrr.data.sources import load_dataset, own_validation_split
from ssrr.data.validation import INDICES_FILE, carve_validation, choose_indices, class_quotas
from ssrr.data.verify import verify_report
from ssrr.data.writer import DatasetArrays, SplitArrays, iter_samples, write_dataset
from ssrr.errors import SsrrError
from ssrr.eval.features import fit_split
from ssrr.eval.probes import KnnProbe, LinearProbe, probe_splits, probes_for
from ssrr.train.loop import pretrain


def _dataset(train: int = 120, classes: int = 4, seed: int = 0, side: int = 8) -> DatasetArrays:
    """Images whose pixels encode their train position (so carving can be traced), unbalanced classes."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (train, side, side, 3), dtype=np.uint8)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = np.arange(train) % 256, np.arange(train) // 256
    fine = np.sort(rng.integers(0, classes, train))
    test_images = rng.integers(0, 256, (20, side, side, 3), dtype=np.uint8)
    test = SplitArrays(test_images, rng.integers(0, classes, 20), np.full(20, -1))
    splits = {"train": SplitArrays(images, fine, np.full(train, -1)), "test": test}
    return DatasetArrays("toy", splits, [f"c{i}" for i in range(classes)], [], {"generator": "tests"}, "test")


def _positions(split: SplitArrays) -> np.ndarray:
    return split.images[:, 0, 0, 0].astype(np.int64) + 256 * split.images[:, 0, 0, 1].astype(np.int64)


def test_carving_is_class_balanced_seeded_disjoint_and_leaves_the_rest_in_train() -> None:
    dataset = _dataset()
    carved, carve = carve_validation(dataset, 30, seed=3)
    train, val = carved.splits["train"], carved.splits["val"]
    fine = dataset.splits["train"].fine
    counts = np.bincount(fine, minlength=4)
    assert np.array_equal(np.bincount(val.fine, minlength=4), class_quotas(counts, 30))  # per class, proportional
    assert np.abs(np.bincount(val.fine, minlength=4) - counts * 30 / len(fine)).max() < 1
    assert len(val.fine) == 30 and len(train.fine) == 90
    assert not set(_positions(train)) & set(_positions(val))  # no image in both
    assert sorted([*_positions(train), *_positions(val)]) == list(range(120))  # together: the original train
    assert np.array_equal(_positions(val), carve.indices)  # the recorded indices are the carved images
    assert np.array_equal(val.fine, fine[carve.indices])  # labels travel with their images
    again = carve_validation(_dataset(), 30, seed=3)[1]
    assert np.array_equal(again.indices, carve.indices)  # deterministic
    assert not np.array_equal(carve_validation(_dataset(), 30, seed=4)[1].indices, carve.indices)


def test_the_choice_is_a_fixed_function_of_labels_count_and_seed() -> None:
    # Pinned: numpy's Generator is stable across machines and versions (NEP 19), so a changed carving is a bug.
    labels = np.repeat(np.arange(3), 4)
    assert choose_indices(labels, 3, 0).tolist() == choose_indices(labels.copy(), 3, 0).tolist()
    assert np.bincount(labels[choose_indices(labels, 6, 0)]).tolist() == [2, 2, 2]
    assert class_quotas(np.array([5, 3, 2]), 5).tolist() == [3, 1, 1]  # remainders to the largest fractions


@pytest.mark.parametrize(
    ("count", "message"), [(3, "at least one image per class"), (118, "leave as many in train"), (0, "per class")]
)
def test_a_validation_split_of_impossible_size_is_one_line(count: int, message: str) -> None:
    with pytest.raises(SsrrError, match=message):
        carve_validation(_dataset(), count)


def test_the_manifest_names_the_validation_split_and_the_shards_verify(tmp_path: Path) -> None:
    carved, carve = carve_validation(_dataset(), 30, seed=3)
    manifest = write_dataset(carved, tmp_path, seed=5, shard_size=16)
    root = tmp_path / "toy"
    assert load_manifest(root).validation_split == "val" and manifest.held_out_split == "test"
    assert manifest.validation_carve == {"from": "train", "samples": 30, "seed": 3, "indices_file": INDICES_FILE}
    assert json.loads((root / INDICES_FILE).read_text())["indices"] == carve.indices.tolist()
    assert manifest.splits["val"].first_index == 90 and manifest.splits["train"].first_index == 0
    assert sorted(index for _, _, (_, _, index) in iter_samples(root, "val")) == list(range(90, 120))
    _, reports = verify_report(root)
    assert all(not report.problems for report in reports.values()), {k: r.problems for k, r in reports.items()}
    plain = write_dataset(_dataset(), tmp_path / "plain", seed=5)  # without --val nothing changes
    assert (
        plain.validation_split is None and "validation_split" not in (tmp_path / "plain/toy/manifest.json").read_text()
    )
    assert "first_index" not in (tmp_path / "plain/toy/manifest.json").read_text()


def test_train_plus_val_reads_the_whole_train_split_with_every_sample_index_once(tmp_path: Path) -> None:
    write_dataset(carve_validation(_dataset(), 30, seed=3)[0], tmp_path, seed=5, shard_size=16)
    root = tmp_path / "toy"
    loader = ViewLoader(root, recipes.evaluation(), split="train+val", batch_size=16, training=False)
    try:
        indices, labels = [], []
        for batch in loader.epoch(0):
            indices += batch.index[batch.valid].tolist()
            labels += batch.fine[batch.valid].tolist()
    finally:
        loader.close()
    assert sorted(indices) == list(range(120))
    assert sorted(labels) == sorted(_dataset().splits["train"].fine.tolist())
    assert load_manifest(root).samples_in("train+val") == 120
    with pytest.raises(SsrrError, match="number their samples alike"):  # two splits numbered from 0
        ViewLoader(root, recipes.evaluation(), split="train+test", batch_size=16, training=False)


def test_the_shard_command_carves_with_val_and_shows_it(tmp_path: Path) -> None:
    made = run_ssrr("shard", "synthetic", "--out", tmp_path, "--train-per-class", 12, "--val", 20, "--val-seed", 2)
    assert made.exit_code == 0, made.output
    manifest = load_manifest(tmp_path / "synthetic")
    assert (manifest.splits["train"].samples, manifest.splits["val"].samples) == (100, 20)
    assert "--val 20 --val-seed 2" in manifest.command
    shown = run_ssrr("shard", "info", tmp_path / "synthetic")
    assert "carved from train: --val 20, seed 2" in shown.output
    bad = run_ssrr("shard", "synthetic", "--out", tmp_path / "bad", "--train-per-class", 12, "--val", 5)
    assert bad.exit_code != 0 and len(error_lines(bad)) == 1 and "per class" in error_lines(bad)[0]
    assert not (tmp_path / "bad" / "synthetic").exists()


def test_an_image_folders_own_val_is_a_validation_split_only_beside_a_test_split() -> None:
    def folder(*names: str) -> DatasetArrays:
        split = SplitArrays(np.zeros((6, 4, 4, 3), np.uint8), np.array([0, 1] * 3), np.full(6, -1))
        return DatasetArrays("f", dict.fromkeys(names, split), ["a", "b"], [], {})

    assert own_validation_split(folder("train", "val", "test")) == "val"
    assert own_validation_split(folder("train", "val")) is None  # val is what it reports on (ImageNet's layout)
    with pytest.raises(SsrrError, match="already has a validation split"):
        carve_validation(replace(folder("train", "val", "test"), validation_split="val"), 2)
    carved, _ = carve_validation(folder("train", "val"), 2)
    assert carved.validation_split == "minival"  # tiny-ImageNet's val is taken: the carved one is minival


def test_probes_score_validation_unless_trained_on_and_their_bank_is_the_training_split(tmp_path: Path) -> None:
    write_dataset(carve_validation(_dataset(), 30, seed=3)[0], tmp_path, seed=5)
    manifest = load_manifest(tmp_path / "toy")
    assert probe_splits(manifest) == ("train", "val")
    assert probe_splits(manifest, "train+val") == ("train+val", "test")  # val is trained on: score test
    assert probe_splits(manifest, "train", "test") == ("train", "test")  # --probe-split
    with pytest.raises(SsrrError, match="--probe-split nope: not a labelled split"):
        probe_splits(manifest, "train", "nope")
    plain = load_dataset("synthetic", train_per_class=2, test_per_class=1)
    assert probe_splits(load_manifest(_written(plain, tmp_path))) == ("train", "test")  # no validation split
    config = RunConfig(dataset=str(tmp_path / "toy"), knn_every=1, eval_every=2)
    assert [(p.bank, p.split) for p in probes_for(config)] == [("train", "val")] * 2
    assert isinstance(probes_for(config)[0], KnnProbe) and isinstance(probes_for(config)[1], LinearProbe)
    assert probes_for(replace(config, probe_split="test"))[0].split == "test"


def _written(dataset: DatasetArrays, out: Path) -> Path:
    write_dataset(dataset, out / "plain")
    return out / "plain" / dataset.name


def test_a_run_probes_the_validation_split_and_says_so_in_its_metrics(tmp_path: Path) -> None:
    write_dataset(carve_validation(_dataset(train=160, side=32), 32, seed=3)[0], tmp_path / "shards", seed=5)
    config = RunConfig(
        dataset=str(tmp_path / "shards" / "toy"), backbone="conv4", k=2, batch=32, epochs=1, knn_every=1,
        out=str(tmp_path / "runs"), name="v", device="cpu",
    )  # fmt: skip
    run = pretrain(config, show=False, probes=probes_for(config))
    record = json.loads((run.run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["probe_split"] == "val" and 0.0 <= record["knn_top1"] <= 100.0 and record["step"] == 128 // 32
    full = replace(config, split="train+val", name="full")
    run = pretrain(full, show=False, probes=probes_for(full))
    record = json.loads((run.run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["probe_split"] == "test" and record["step"] == 160 // 32  # trained on all 160


def test_the_tuning_script_chooses_on_validation_and_trains_the_finals_on_train_plus_val(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    write_dataset(carve_validation(_dataset(), 30)[0], tmp_path / "with")
    write_dataset(_dataset(), tmp_path / "without")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "ssrr").write_text('#!/bin/sh\necho "ssrr $*" >> "$CALLS"\n')
    (fake / "ssrr").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "PYTHON": sys.executable, "SEEDS": "1"}
    script = Path(__file__).parents[1] / "scripts" / "fast_ablations.sh"

    def run(dataset: Path, what: str) -> tuple[int, list[str]]:
        calls = tmp_path / f"{what}-{dataset.parent.name}.txt"
        done = subprocess.run(
            ["bash", str(script), str(dataset), str(tmp_path / "out"), what], env={**env, "CALLS": str(calls)},
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        return done.returncode, calls.read_text().splitlines() if calls.exists() else []

    code, calls = run(tmp_path / "with" / "toy", "k8-budget")
    assert code == 0 and calls and all("--split train --probe-split val" in call for call in calls)
    code, calls = run(tmp_path / "with" / "toy", "finals")
    assert code == 0 and calls and all("--split train+val --probe-split test" in call for call in calls)
    assert run(tmp_path / "without" / "toy", "k8-budget") == (2, [])  # no validation split: refused


def test_stl10s_layout_carves_from_train_and_reads_train_val_and_unlabeled_as_one(tmp_path: Path) -> None:
    dataset = _dataset(train=40)
    rng = np.random.default_rng(1)
    dataset.splits["unlabeled"] = SplitArrays.unlabeled(rng.integers(0, 256, (24, 8, 8, 3), dtype=np.uint8))
    write_dataset(carve_validation(dataset, 8)[0], tmp_path, shard_size=8)
    root = tmp_path / "toy"
    for split, count in (("train+val+unlabeled", 64), ("unlabeled+train", 56), ("train+unlabeled", 56)):
        loader = ViewLoader(root, recipes.evaluation(), split=split, batch_size=8, training=False)
        try:
            indices = [i for batch in loader.epoch(0) for i in batch.index[batch.valid].tolist()]
        finally:
            loader.close()
        assert len(indices) == len(set(indices)) == count, split  # every sample numbered once
    assert probe_splits(load_manifest(root), "train+unlabeled") == ("train", "val")  # val is not trained on


def test_a_folder_of_train_alone_gets_a_validation_split_but_no_held_out_one(tmp_path: Path) -> None:
    dataset = _dataset()
    del dataset.splits["test"]
    manifest = write_dataset(carve_validation(replace(dataset, eval_split=None), 20)[0], tmp_path)
    assert manifest.validation_split == "val" and manifest.held_out_split is None  # val is no test split


def test_evaluation_fits_on_train_plus_val_when_scoring_test_and_on_train_alone_when_scoring_val(
    tmp_path: Path,
) -> None:
    write_dataset(carve_validation(_dataset(train=160, side=32), 32, seed=3)[0], tmp_path, seed=5)
    manifest = load_manifest(tmp_path / "toy")
    assert (fit_split(manifest, "test"), fit_split(manifest, "val")) == ("train+val", "train")
    plain = load_manifest(_written(load_dataset("synthetic", train_per_class=2, test_per_class=1), tmp_path))
    assert fit_split(plain, "test") == "train"  # nothing carved: the train split as before
    common = ("random:conv4", "--dataset", tmp_path / "toy", "--out", tmp_path / "eval", "--json")
    for protocol, extra in (("linear", ("--epochs", 1)), ("knn", ())):
        on_test = json.loads(run_ssrr("eval", protocol, *common, *extra).stdout)
        on_val = json.loads(run_ssrr("eval", protocol, *common, *extra, "--split", "val").stdout)
        assert (on_test["train_split"], on_test["train_samples"]) == ("train+val", 160), protocol  # every image
        assert (on_val["train_split"], on_val["train_samples"]) == ("train", 128), protocol  # never what it scores
        named = json.loads(run_ssrr("eval", protocol, *common, *extra, "--split", "test").stdout)
        assert named["train_split"] == "train+val"
    retrieval = json.loads(run_ssrr("eval", "retrieval", *common, "--show", 0).stdout)
    assert (retrieval["gallery_split"], retrieval["gallery"]) == ("train+val", 160)
    typed = json.loads(run_ssrr("eval", "retrieval", *common, "--show", 0, "--gallery", "train").stdout)
    assert (typed["gallery_split"], typed["gallery"]) == ("train", 128)
