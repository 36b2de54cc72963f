"""The protocols end to end through real (tiny) shard folders and the DALI evaluation pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_shards
from fixtures_eval import features_from_tensors
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from ssrr.data.formats import load_manifest
from ssrr.data.writer import DatasetArrays, SplitArrays, iter_samples, write_dataset
from ssrr.errors import SsrrError
from ssrr.eval.features import eval_image_size, extract_features
from ssrr.eval.finetune import finetune
from ssrr.eval.knn import knn_probe
from ssrr.eval.linear import linear_eval
from ssrr.eval.retrieval import grid_size, nearest, retrieval_eval
from ssrr.eval.semi import semi_eval, split_labels
from ssrr.eval.tsne import tsne_eval
from ssrr.models.backbones import build_backbone
from ssrr.precision import as_execution
from ssrr.train.checkpoint import LoadedBackbone, load_backbone


class ChannelMeans(nn.Module):
    """An 'identity-ish' backbone: the mean of each normalised colour channel, scaled up (D = 3)."""

    feature_dim = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 10 * x.mean(dim=(2, 3))


def random_conv4(seed: int = 0) -> LoadedBackbone:
    torch.manual_seed(seed)
    return load_backbone("random:conv4")


@pytest.fixture(scope="module")
def colours(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes, each a dominant colour channel: linearly separable from the channel means."""
    return make_shards(tmp_path_factory.mktemp("colours"), name="colours", train=300, test=90, classes=3, size=16)


def raw_split(shard_dir: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(normalised images NCHW, fine labels, index) read with the plain tarfile reader, sorted by index."""
    manifest = load_manifest(shard_dir)
    rows = sorted(iter_samples(shard_dir, split), key=lambda r: r[2][2])
    images = torch.tensor(np.stack([r[1] for r in rows])).permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor(manifest.mean)[:, None, None], torch.tensor(manifest.std)[:, None, None]
    labels = torch.tensor([r[2][0] for r in rows])
    return (images - mean) / std, labels, torch.tensor([r[2][2] for r in rows])


def test_features_cover_the_split_once_in_index_order_as_plain_torch_computes_them(colours: Path) -> None:
    loaded = random_conv4()
    loaded.module.train()
    features = extract_features(loaded.module, colours, "test", device="cpu", batch=32)  # 90 = 2 x 32 + 26 padded
    assert loaded.module.training  # the caller's mode is given back
    images, labels, index = raw_split(colours, "test")
    assert torch.equal(features.index, index) and torch.equal(features.fine, labels)
    expected = features_from_tensors(loaded.module, images, labels).z
    torch.testing.assert_close(features.z, expected, atol=2e-4, rtol=1e-3)


def test_linear_through_shards_reaches_100_percent_and_writes_its_files(colours: Path, tmp_path: Path) -> None:
    loaded = LoadedBackbone(ChannelMeans(), "means", "random:means", None, None)
    result = linear_eval(loaded, colours, epochs=300, seed=1, device="cpu", out=tmp_path / "eval")
    assert result["top1"] == pytest.approx(100.0) and result["top5"] == pytest.approx(100.0)
    assert result["train_samples"] == 300 and result["test_samples"] == 90
    stem = tmp_path / "eval" / "linear-colours-random-means-s1"
    saved = json.loads(stem.with_suffix(".json").read_text())
    for key in ("top1", "top5", "per_class", "dataset", "labels", "backbone", "source", "seed", "protocol", "wall_s"):
        assert key in saved
    assert set(saved["files"]) == {f"{stem}-confusion.png", f"{stem}.json", f"{stem}.md"}
    assert "top1" in Path(f"{stem}.md").read_text()
    image = np.asarray(Image.open(f"{stem}-confusion.png").convert("RGB"))
    assert image.shape == (800, 800, 3) and image.std() > 0
    with pytest.raises(SsrrError, match="no coarse classes"):
        linear_eval(loaded, colours, labels="coarse", epochs=1, device="cpu", out=tmp_path / "eval")


def test_cli_linear_json_on_stdout_for_a_random_backbone(colours: Path, tmp_path: Path) -> None:
    from ssrr.cli.app import _mount, app

    _mount()
    args = [
        "eval",
        "linear",
        "random:conv4",
        "--dataset",
        str(colours),
        "--epochs",
        "2",
        "--seed",
        "2",
        "--device",
        "cpu",
        "--out",
        str(tmp_path),
        "--json",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert 0 <= data["top1"] <= 100 and data["top5"] >= data["top1"] and data["source"] == "random:conv4"
    assert (tmp_path / "linear-colours-random-conv4-s2.json").is_file()
    again = CliRunner().invoke(app, args)  # seeded: the same random weights and head
    assert json.loads(again.stdout.strip().splitlines()[-1])["top1"] == data["top1"]


def test_retrieval_finds_the_exact_duplicate_first_and_draws_the_grid(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
    test = rng.integers(0, 256, (10, 16, 16, 3), dtype=np.uint8)
    test[3] = train[17]
    labels = np.arange(40) % 4
    dataset = DatasetArrays(
        "dups",
        {
            "train": SplitArrays(train, labels, np.full(40, -1)),
            "test": SplitArrays(test, np.arange(10) % 4, np.full(10, -1)),
        },
        ["a", "b", "c", "d"],
        [],
        {"generator": "tests"},
    )
    write_dataset(dataset, tmp_path, seed=1, shard_size=16)
    shards = tmp_path / "dups"
    find = {r[1].tobytes(): r[2][2] for r in iter_samples(shards, "train")}
    query = next(r[2][2] for r in iter_samples(shards, "test") if r[1].tobytes() in find)
    duplicate = find[next(r[1].tobytes() for r in iter_samples(shards, "test") if r[2][2] == query)]
    backbone = random_conv4().module
    gallery = extract_features(backbone, shards, "train", device="cpu")
    queries = extract_features(backbone, shards, "test", device="cpu")
    sims, rows = nearest(gallery.z, queries.z, 10)
    assert int(gallery.index[rows[query, 0]]) == duplicate
    assert float(sims[query, 0]) == pytest.approx(1.0, abs=1e-5)
    result = retrieval_eval(random_conv4(), shards, show=4, device="cpu", out=tmp_path / "eval")
    assert set(result["precision_at"]) == {"1", "5", "10"} and 0 <= result["map"] <= 100
    assert len(result["map_per_class"]) == 4
    image = np.asarray(Image.open(tmp_path / "eval" / "retrieval-dups-random-conv4-s1-grid.png").convert("RGB"))
    width, height = grid_size(4)
    assert image.shape == (height, width, 3) and image.std() > 0


def test_knn_probe_keeps_the_training_mode(colours: Path) -> None:
    backbone = ChannelMeans()
    backbone.train()
    top1 = knn_probe(backbone, colours, as_execution("cpu"))
    assert top1 == pytest.approx(100.0) and backbone.training


def test_semi_linear_and_tsne_through_shards(colours: Path, tmp_path: Path) -> None:
    loaded = LoadedBackbone(ChannelMeans(), "means", "random:means", None, None)
    result = semi_eval(loaded, colours, fractions=[0.1, 1.0], epochs=30, device="cpu", out=tmp_path)
    assert result["samples"] == {"0.1": 30, "1": 300}
    assert result["fractions"]["1"] >= result["fractions"]["0.1"] - 5
    image = np.asarray(Image.open(tmp_path / "semi-colours-random-means-s1.png").convert("RGB"))
    assert image.shape == (500, 700, 3) and image.std() > 0
    fine, _, index = split_labels(colours, "train")
    assert torch.equal(index, torch.arange(300)) and len(fine.unique()) == 3
    result = tsne_eval(loaded, colours, points=60, iterations=150, device="cpu", out=tmp_path)
    assert result["points"] == 60
    image = np.asarray(Image.open(tmp_path / "tsne-colours-random-means-s1.png").convert("RGB"))
    assert image.shape == (800, 800, 3) and image.std() > 0


def test_finetune_writes_loadable_weights(colours: Path, tmp_path: Path) -> None:
    result = finetune(random_conv4(), colours, epochs=1, batch=64, device="cpu", out=tmp_path)
    assert 0 <= result["top1"] <= 100 and result["history"][0]["epoch"] == 1
    reloaded = load_backbone(tmp_path / "finetune-colours-random-conv4-s1" / "backbone.safetensors", "conv4")
    assert reloaded.name == "conv4"
    with pytest.raises(SsrrError, match="not resnet32"):
        load_backbone(tmp_path / "finetune-colours-random-conv4-s1" / "backbone.safetensors", "resnet32")
    subset = finetune(
        random_conv4(),
        colours,
        epochs=1,
        batch=16,
        device="cpu",
        out=tmp_path / "sub",
        subset=torch.arange(0, 300, 10),
        write=False,
    )
    assert subset["train_samples"] == 30


def test_domain_transfer_resizes_to_the_pretraining_size(colours: Path) -> None:
    manifest = load_manifest(colours)
    pretrained_at_32 = LoadedBackbone(build_backbone("conv4"), "conv4", "x", "cifar10", (32, 32))
    assert eval_image_size(pretrained_at_32, manifest) == (32, 32)
    assert eval_image_size(pretrained_at_32, manifest, "native") is None
    assert eval_image_size(LoadedBackbone(build_backbone("conv4"), "conv4", "x", None, None), manifest) is None
    features = extract_features(pretrained_at_32.module, colours, "test", device="cpu", image_size=(32, 32))
    assert features.z.shape == (90, 64)


def test_run_folder_evaluated_on_its_own_dataset_then_reported(colours: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file
    from ssrr.cli.app import _mount, app

    from ssrr.config import RunConfig

    run = tmp_path / "runs" / "relational-conv4-colours-s1"
    RunConfig(method="relational", dataset=str(colours), backbone="conv4", name=run.name).save(run)
    weights = {k: v.contiguous() for k, v in build_backbone("conv4").state_dict().items()}
    save_file(weights, str(run / "backbone.safetensors"), metadata={"backbone": "conv4"})
    _mount()
    for seed in ("1", "2"):  # no --dataset: the run's own
        res = CliRunner().invoke(app, ["eval", "knn", str(run), "--seed", seed, "--device", "cpu", "--json"])
        assert res.exit_code == 0, res.output
    assert (run / "eval" / "knn-colours-relational-conv4-colours-s1-s2.json").is_file()
    res = CliRunner().invoke(app, ["report", str(tmp_path / "runs"), "--json"])
    assert res.exit_code == 0, res.output
    row = json.loads(res.stdout.strip().splitlines()[-1])["rows"][0]
    assert row["method"] == "Relational Reasoning" and row["backbone"] == "conv4"
    assert row["cells"]["k-NN colours"]["n"] == 2


def test_bench_linear_reports_both_ways(colours: Path) -> None:
    from ssrr.bench.linear import bench_linear

    result = bench_linear(colours, "random:conv4", epochs=3, device="cpu", workers=0)
    # both walls are rounded to ms and the ratio to 0.01: on a tiny dataset that alone moves it by a few percent
    assert result["speedup"] == pytest.approx(result["baseline_wall_s"] / result["wall_s"], rel=0.05, abs=0.01)
    assert result["baseline_wall_s"] >= result["baseline_extract_s"] > 0 and result["baseline_workers"] == 0
    # the same frozen backbone, head initialisation and shuffles both ways: the same classifier within a few rows
    assert result["accuracy_check_diff"] == pytest.approx(abs(result["top1"] - result["baseline_top1"]))
    assert result["accuracy_check_diff"] <= 10.0
