"""The evaluation split: every protocol scores the dataset's labelled held-out split by default (test for
CIFAR/STL-10, val for tiny-ImageNet and for a train/val image folder), takes `--split`, and checks splits
and labels before any feature is computed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fixtures_data import error_lines, make_tiny_imagenet, run_ssrr
from PIL import Image

import ssrr.eval.features as features_module
from ssrr.data.formats import MANIFEST, load_manifest
from ssrr.data.sources import load_dataset
from ssrr.data.writer import write_dataset
from ssrr.errors import SsrrError
from ssrr.eval.linear import linear_eval
from ssrr.train.checkpoint import load_backbone

VAL_IMAGES = 6


@pytest.fixture(scope="module")
def tiny_imagenet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-ImageNet's real layout (train/<wnid>/images, val/images + val_annotations.txt, unlabelled
    test/images, wnids.txt, words.txt), 3 classes, sharded by the real source."""
    folder = tmp_path_factory.mktemp("tiny")
    root, _ = make_tiny_imagenet(folder, per_class=4, val=VAL_IMAGES, test=3)
    write_dataset(load_dataset("tiny-imagenet", source=root), folder / "shards")
    return folder / "shards" / "tiny-imagenet"


@pytest.fixture(scope="module")
def train_val_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ImageFolder with train/ and val/ only (ImageNet's own layout), sharded."""
    folder = tmp_path_factory.mktemp("trainval")
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("val", 3)):
        for label in ("ant", "bee"):
            (folder / "tv" / split / label).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / "tv" / split / label / f"{i}.png")
    write_dataset(load_dataset("imagefolder", source=folder / "tv"), folder / "shards")
    return folder / "shards" / "tv"


def _no_features(*args: object, **kwargs: object) -> None:
    raise AssertionError("features were computed before the splits were checked")


def test_the_manifest_names_the_labelled_held_out_split_per_source(tiny_imagenet: Path, train_val_folder: Path) -> None:
    tiny = load_manifest(tiny_imagenet)
    assert tiny.eval_split == "val" and not tiny.splits["test"].labeled  # test exists but has no labels
    assert load_manifest(train_val_folder).eval_split == "val"


def test_an_old_manifest_without_the_field_falls_back_to_the_rule(tmp_path: Path, tiny_imagenet: Path) -> None:
    import shutil

    old = tmp_path / "old"
    shutil.copytree(tiny_imagenet, old)
    data = json.loads((old / MANIFEST).read_text())
    del data["eval_split"]
    (old / MANIFEST).write_text(json.dumps(data))
    manifest = load_manifest(old)
    assert manifest.eval_split is None
    assert manifest.held_out_split == "val"  # test exists but is unlabelled: val


def test_tiny_imagenet_is_evaluated_on_its_val_split_by_default(tiny_imagenet: Path, tmp_path: Path) -> None:
    result = run_ssrr(
        "eval", "linear", "random:conv4", "--dataset", tiny_imagenet, "--epochs", "2", "--device", "cpu",
        "--out", tmp_path, "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    assert printed["split"] == "val" and printed["test_samples"] == VAL_IMAGES
    assert 0.0 <= printed["top1"] <= 100.0
    assert (tmp_path / "linear-tiny-imagenet-random-conv4-s1.json").is_file()


def test_an_unlabelled_split_is_refused_in_one_line_before_any_feature(
    tiny_imagenet: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(features_module, "extract_features", _no_features)
    monkeypatch.setattr("ssrr.eval.linear.extract_features", _no_features)
    result = run_ssrr(
        "eval", "linear", "random:conv4", "--dataset", tiny_imagenet, "--split", "test", "--out", tmp_path
    )
    assert result.exit_code == 1
    (line,) = error_lines(result)
    assert "split 'test' has no fine labels" in line and "--split val" in line
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_a_train_val_image_folder_is_evaluated_on_val_and_a_missing_split_named(
    train_val_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = load_backbone("random:conv4")
    result = linear_eval(loaded, train_val_folder, epochs=1, device="cpu", out=tmp_path)
    assert result["split"] == "val" and result["test_samples"] == 6
    monkeypatch.setattr("ssrr.eval.linear.extract_features", _no_features)
    with pytest.raises(SsrrError, match=r"no split 'test' \(has: train, val\)"):
        linear_eval(loaded, train_val_folder, epochs=1, device="cpu", out=tmp_path, split="test")
    with pytest.raises(SsrrError, match="has no coarse classes"):
        linear_eval(loaded, train_val_folder, labels="coarse", device="cpu", out=tmp_path)


def test_scoring_another_split_than_the_default_writes_its_own_result(train_val_folder: Path, tmp_path: Path) -> None:
    loaded = load_backbone("random:conv4")
    result = linear_eval(loaded, train_val_folder, epochs=1, device="cpu", out=tmp_path, split="train")
    assert result["split"] == "train" and result["test_samples"] == 12
    assert (tmp_path / "linear-tv-train-random-conv4-s1.json").is_file()
    assert not (tmp_path / "linear-tv-random-conv4-s1.json").exists()
    assert result["default_split"] is False
    from ssrr.eval.report import columns_of

    assert [column for column, _ in columns_of(result, None)] == ["Linear tv [train]"]  # never mixed with val's
    default = linear_eval(loaded, train_val_folder, epochs=1, device="cpu", out=tmp_path)
    assert default["default_split"] is True and [c for c, _ in columns_of(default, None)] == ["Linear tv"]


@pytest.mark.parametrize(
    ("protocol", "options"),
    [
        ("finetune", ["--epochs", "1", "--batch", "4"]),
        ("semi", ["--fractions", "1.0", "--epochs", "1"]),
        ("retrieval", ["--show", "0"]),
        ("tsne", ["--points", "0", "--perplexity", "2", "--iterations", "20"]),
        ("knn", ["--k", "3"]),
    ],
)
def test_every_protocol_defaults_to_the_held_out_split_and_takes_split(
    protocol: str, options: list[str], tiny_imagenet: Path, tmp_path: Path
) -> None:
    common = ["random:conv4", "--dataset", str(tiny_imagenet), "--device", "cpu", "--out", str(tmp_path)]
    result = run_ssrr("eval", protocol, *common, *options, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["split"] == "val"
    refused = run_ssrr("eval", protocol, *common, *options, "--split", "test")
    assert refused.exit_code == 1 and len(error_lines(refused)) == 1
    assert "split 'test' has no fine labels" in error_lines(refused)[0]


def test_reproduce_evaluates_tiny_imagenet_on_val(tiny_imagenet: Path, tmp_path: Path) -> None:
    from ssrr.experiments import EvalJob, Run
    from ssrr.experiments.execution import _evaluate

    run = Run("random-conv4-s1", "random", "conv4", 1, None, tmp_path / "random-conv4")
    stem = "linear-tiny-imagenet-random-conv4-s1"
    job = EvalJob("linear", str(tiny_imagenet), "fine", 1, 1, (), tmp_path / "eval", stem)
    _evaluate(run, job, str(tiny_imagenet.parent), "cpu", None, show=False)
    result = json.loads(job.result.read_text())
    assert result["split"] == "val" and result["test_samples"] == VAL_IMAGES
