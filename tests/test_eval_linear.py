"""Linear evaluation: the fast step is Adam, cached features train the same head as recomputed ones,
separable problems are solved, checkpoints of another backbone are refused, the confusion PNG is drawn."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_eval import features_from_tensors
from PIL import Image
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

from ssrr.config import RunConfig
from ssrr.errors import SsrrError
from ssrr.eval.features import Features
from ssrr.eval.linear import (
    classification_metrics,
    confusion_png,
    fit_and_score,
    predict,
    train_linear,
    train_linear_autograd,
)
from ssrr.models.backbones import build_backbone
from ssrr.train.checkpoint import load_backbone


def blobs(n: int, classes: int, dim: int, seed: int, spread: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(99)) * 3
    y = torch.randint(0, classes, (n,), generator=g)
    return centres[y] + spread * torch.randn(n, dim, generator=g), y


def as_features(z: torch.Tensor, y: torch.Tensor) -> Features:
    return Features(z, y, torch.full_like(y, -1), torch.arange(len(y)))


def test_fast_step_is_adam_on_cross_entropy() -> None:
    z, y = blobs(700, 5, 12, seed=0, spread=2.0)
    fast = train_linear(z, y, 5, epochs=3, batch=128, seed=4)
    slow = train_linear_autograd(z, y, 5, epochs=3, batch=128, seed=4)
    torch.testing.assert_close(fast.head.weight, slow.head.weight, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(fast.head.bias, slow.head.bias, atol=1e-6, rtol=1e-5)
    assert fast.losses == pytest.approx(slow.losses, rel=1e-5)


def test_separable_features_reach_100_percent_and_seeds_are_reproducible() -> None:
    names = [f"c{i}" for i in range(6)]
    train, test = as_features(*blobs(1200, 6, 16, seed=1)), as_features(*blobs(300, 6, 16, seed=2))
    metrics, fit = fit_and_score(train, test, "fine", names, epochs=10, seed=1)
    assert metrics["top1"] == pytest.approx(100.0)
    assert metrics["top5"] == pytest.approx(100.0)
    assert set(metrics["per_class"]) == set(names) and min(metrics["per_class"].values()) == 100.0
    assert fit.losses[-1] < fit.losses[0]
    again, _ = fit_and_score(train, test, "fine", names, epochs=10, seed=1)
    assert again["top1"] == metrics["top1"] and again["final_loss"] == metrics["final_loss"]
    other, _ = fit_and_score(train, test, "fine", names, epochs=1, seed=2)
    assert other["final_loss"] != metrics["final_loss"]


def test_cached_features_train_the_same_head_as_recomputing_them_every_step() -> None:
    torch.manual_seed(0)
    backbone = build_backbone("conv4")
    for module in backbone.modules():  # non-trivial BatchNorm running statistics
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    backbone.eval()
    images = torch.randn(300, 3, 16, 16)
    labels = torch.randint(0, 3, (300,))
    cached = features_from_tensors(backbone, images, labels, batch=256).z

    def recompute(rows: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return backbone(images[rows])

    a = train_linear(cached, labels, 3, epochs=2, seed=5)
    b = train_linear(recompute, labels, 3, epochs=2, seed=5, dim=64)
    torch.testing.assert_close(a.head.weight, b.head.weight, atol=1e-5, rtol=1e-4)
    logits_a, logits_b = predict(a.head, cached), predict(b.head, cached)
    torch.testing.assert_close(logits_a, logits_b, atol=1e-5, rtol=1e-4)
    assert torch.equal(logits_a.argmax(1), logits_b.argmax(1))
    assert backbone.training is False


def test_metrics_and_confusion_png(tmp_path: Path) -> None:
    names = ["a", "b", "c"]
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    logits = torch.tensor([[3, 1, 0], [0, 2, 1], [0, 3, 1], [1, 2, 0], [0, 1, 2], [2, 0, 1]], dtype=torch.float)
    m = classification_metrics(logits, labels, names)
    assert m["top1"] == pytest.approx(100 * 4 / 6)
    assert m["top5"] == pytest.approx(100.0)  # k = min(5, classes)
    assert m["per_class"] == {"a": 50.0, "b": 100.0, "c": 50.0}
    assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    png = confusion_png(m["confusion"], names, tmp_path / "c.png", "test")
    image = np.asarray(Image.open(png).convert("RGB"))
    assert image.shape == (800, 800, 3)
    assert image.std() > 0 and len(np.unique(image.reshape(-1, 3), axis=0)) > 10


def make_run(
    folder: Path,
    backbone: str = "conv4",
    dataset: str = "cifar10",
    method: str = "relational",
    seed: int = 1,
    tensors: dict | None = None,
) -> Path:
    RunConfig(method=method, dataset=dataset, backbone=backbone, seed=seed, name=folder.name).save(folder)
    weights = tensors if tensors is not None else build_backbone(backbone).state_dict()
    save_file(
        {k: v.contiguous() for k, v in weights.items()},
        str(folder / "backbone.safetensors"),
        metadata={"backbone": backbone},
    )
    return folder


def test_checkpoint_of_another_backbone_is_refused(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    assert load_backbone(run).name == "conv4"
    with pytest.raises(SsrrError, match="conv4 checkpoint, not resnet32"):
        load_backbone(run, "resnet32")
    wrong = make_run(tmp_path / "wrong", tensors=build_backbone("resnet8").state_dict())  # labelled conv4
    with pytest.raises(SsrrError, match="do not fit a conv4 backbone"):
        load_backbone(wrong)


def _cli(*args: str):  # type: ignore[no-untyped-def]
    from ssrr.cli.app import _mount, app

    _mount()
    return CliRunner().invoke(app, list(args))


def test_cli_refuses_other_backbone_missing_run_and_missing_dataset_in_one_line(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    for args, expected in [
        ([str(run), "--backbone", "resnet32", "--dataset", str(tmp_path)], "not resnet32"),
        ([str(tmp_path / "nope"), "--dataset", "cifar10"], "no such run"),
        ([str(run), "--dataset", str(tmp_path / "missing-shards")], "no shards at"),
        (["random:conv4", "--labels", "medium", "--dataset", str(tmp_path)], "no shards at"),
    ]:
        result = _cli("eval", "linear", *args)
        assert result.exit_code == 1, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and expected in lines[0], result.output
        assert "Traceback" not in result.output


def test_every_eval_command_has_help_with_an_example() -> None:
    for command in ("linear", "finetune", "semi", "retrieval", "tsne", "knn"):
        result = _cli("eval", command, "--help")
        assert result.exit_code == 0, result.output
        assert "ssrr eval" in result.output and "Example" in result.output
    assert json.loads("{}") == {}
