"""torchvision (`tv:NAME`) and timm (`timm:NAME`) backbones: built by name without downloads, classifier removed,
feature size read from the model, the CIFAR stem, Deep InfoMax's local maps, trained by the real loop, and the
`random:tv:NAME` lower bound."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from fixtures_data import error_lines, run_ssrr
from torch import nn

from ssrr.config import RunConfig
from ssrr.errors import SsrrError
from ssrr.models.backbones import Backbone, build_backbone
from ssrr.train.checkpoint import load_backbone

HAS_TIMM = importlib.util.find_spec("timm") is not None


@pytest.mark.parametrize(
    ("spec", "dim"),
    [("tv:resnet18", 512), pytest.param("tv:resnet50", 2048, marks=pytest.mark.slow), ("tv:mobilenet_v3_small", 1024)],
)
def test_tv_backbone_returns_pooled_features_of_the_models_own_size(spec: str, dim: int) -> None:
    torch.manual_seed(0)
    net = build_backbone(spec).eval()
    assert isinstance(net, Backbone)
    assert net.feature_dim == dim
    assert not any(isinstance(m, nn.Linear) and m.out_features == 1000 for m in net.modules())  # no classifier
    x = torch.randn(2, 3, 64, 64)
    assert net(x).shape == (2, dim)


def test_tv_resnet18_equals_torchvision_without_its_classifier() -> None:
    torch.manual_seed(0)
    net = build_backbone("tv:resnet18").eval()
    reference = torchvision.models.resnet18(weights=None)
    reference.fc = nn.Identity()
    reference.load_state_dict({k.removeprefix("net."): v for k, v in net.state_dict().items()}, strict=True)
    x = torch.randn(2, 3, 48, 48)
    torch.testing.assert_close(net(x), reference.eval()(x))


def test_cifar_stem_keeps_the_resolution_and_local_maps_follow_it() -> None:
    x = torch.randn(2, 3, 32, 32)
    default = build_backbone("tv:resnet18")
    cifar = build_backbone("tv:resnet18", "cifar")
    assert cifar.net.conv1.kernel_size == (3, 3) and cifar.net.conv1.stride == (1, 1)
    assert isinstance(cifar.net.maxpool, nn.Identity)
    local_default, _ = default.forward_with_local(x)
    local_cifar, z = cifar.forward_with_local(x)
    assert local_default.shape == (2, 64, 16, 16)  # 7x7 stride 2 stem
    assert local_cifar.shape == (2, 64, 32, 32)
    assert z.shape == (2, 512) and cifar.local_channels == 64


def test_local_maps_carry_gradients_to_the_stem() -> None:
    net = build_backbone("tv:resnet18", "cifar")
    local, z = net.forward_with_local(torch.randn(2, 3, 16, 16))
    (local.mean() + z.mean()).backward()
    assert net.net.conv1.weight.grad is not None and float(net.net.conv1.weight.grad.abs().sum()) > 0


def test_bad_names_and_stems_are_one_line_errors() -> None:
    with pytest.raises(SsrrError, match=r"tv:resnet1000: not a torchvision classification model"):
        build_backbone("tv:resnet1000")
    with pytest.raises(SsrrError, match=r"unknown backbone 'hub:resnet18'"):
        build_backbone("hub:resnet18")
    with pytest.raises(SsrrError, match=r"--stem cifar: for tv:NAME and timm:NAME backbones; conv4"):
        build_backbone("conv4", "cifar")
    with pytest.raises(SsrrError, match=r"--stem cifar: tv:vit_b_16 has no ResNet-style stem"):
        build_backbone("tv:vit_b_16", "cifar")
    with pytest.raises(SsrrError, match=r"--stem must be one of default, cifar"):
        RunConfig(stem="tiny").validate()


def test_timm_without_the_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # find_spec then raises: the package reads as missing
    with pytest.raises(
        SsrrError, match=r'timm:resnet18 needs the optional timm package, not installed: pip install "ssrr\[timm\]"'
    ):
        build_backbone("timm:resnet18")


@pytest.mark.skipif(not HAS_TIMM, reason="timm not installed (pip install -e '.[timm]')")
def test_timm_backbone_with_cifar_stem() -> None:
    net = build_backbone("timm:resnet18", "cifar")
    assert net.feature_dim == 512
    local, z = net.forward_with_local(torch.randn(2, 3, 32, 32))
    assert local.shape == (2, 64, 32, 32) and z.shape == (2, 512)
    with pytest.raises(SsrrError, match=r"timm:no_such_model: not a timm model"):
        build_backbone("timm:no_such_model")


def test_random_spec_with_stem() -> None:
    loaded = load_backbone("random:tv:resnet18@cifar")
    assert loaded.name == "tv:resnet18"
    assert loaded.module.net.conv1.stride == (1, 1)


@pytest.mark.slow
def test_pretrain_tv_backbone_then_evaluate_it_and_its_random_twin(tiny_shards: Path, tmp_path: Path) -> None:
    """The real loop trains tv:resnet18 with the CIFAR stem; the run records the stem, the checkpoint reloads the
    same model, and `random:tv:resnet18@cifar` evaluates beside it."""
    runs = tmp_path / "runs"
    result = run_ssrr(
        "pretrain", "--dataset", tiny_shards, "--backbone", "tv:resnet18", "--stem", "cifar", "--k", "2",
        "--batch", "8", "--epochs", "1", "--max-steps", "2", "--out", runs, "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    run = runs / "relational-tv-resnet18-tiny-s1"
    assert RunConfig.load(run).stem == "cifar"
    loaded = load_backbone(run)
    assert loaded.module.net.conv1.stride == (1, 1) and loaded.name == "tv:resnet18"
    for spec in (run, "random:tv:resnet18@cifar"):
        out = run_ssrr("eval", "knn", spec, "--dataset", tiny_shards, "--k", "5", "--out", tmp_path / "eval", "--json")
        assert out.exit_code == 0, out.output
        assert '"backbone": "tv:resnet18"' in out.output or '"backbone":"tv:resnet18"' in out.output
    resumed = run_ssrr(
        "pretrain", "--dataset", tiny_shards, "--backbone", "tv:resnet18", "--k", "2", "--batch", "8",
        "--stem", "default", "--epochs", "1", "--out", runs, "--resume", "--quiet",
    )  # fmt: skip
    assert resumed.exit_code == 1
    assert any("stem" in line for line in error_lines(resumed)), resumed.output
