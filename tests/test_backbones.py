"""Backbones: exact parameter counts, output shapes, feature_dim, local maps, channels_last, init, registry."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ssrr.errors import SsrrError
from ssrr.models.backbones import BACKBONES, Backbone, build_backbone

PARAMS = {"conv4": 24_648, "resnet8": 77_392, "resnet32": 466_256, "resnet56": 855_120, "resnet34": 21_284_672}
DIMS = {"conv4": 64, "resnet8": 64, "resnet32": 64, "resnet56": 64, "resnet34": 512}
LOCAL = {"conv4": (8, 32), "resnet8": (16, 32), "resnet32": (16, 32), "resnet56": (16, 32), "resnet34": (64, 32)}
SIDE = {"conv4": 32, "resnet8": 32, "resnet32": 32, "resnet56": 32, "resnet34": 64}


def test_registry_lists_all() -> None:
    assert set(BACKBONES) == set(PARAMS)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_count_exact(name: str) -> None:
    net = build_backbone(name)
    assert isinstance(net, Backbone)
    assert sum(p.numel() for p in net.parameters()) == PARAMS[name]


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_output_shape_and_feature_dim(name: str) -> None:
    torch.manual_seed(0)
    net = build_backbone(name)
    assert net.feature_dim == DIMS[name]
    side = SIDE[name]
    x = torch.randn(3, 3, side, side)
    z = net(x)
    assert z.shape == (3, DIMS[name])
    local_maps, z2 = net.forward_with_local(x)
    channels, hw = LOCAL[name]
    assert net.local_channels == channels
    assert local_maps.shape == (3, channels, hw, hw)
    torch.testing.assert_close(z2, z)


def test_resnet34_stl10_size() -> None:
    net = build_backbone("resnet34").eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 96, 96)).shape == (1, 512)


@pytest.mark.parametrize("name", ["conv4", "resnet8"])
def test_channels_last_matches(name: str) -> None:
    torch.manual_seed(0)
    net = build_backbone(name)
    x = torch.randn(4, 3, 32, 32)
    ref = net(x)
    net_cl = net.to(memory_format=torch.channels_last)
    out = net_cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    out.sum().backward()  # backward works in channels_last


def test_other_sizes_and_batch_of_one_eval() -> None:
    net = build_backbone("conv4").eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 64, 64)).shape == (1, 64)


def test_unknown_backbone_lists_known() -> None:
    with pytest.raises(SsrrError) as err:
        build_backbone("vgg11")
    for name in BACKBONES:
        assert name in str(err.value)


@pytest.mark.parametrize("name", ["conv4", "resnet8"])
def test_initialisation(name: str) -> None:
    torch.manual_seed(0)
    net = build_backbone(name)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    # He-normal fan-out: std = sqrt(2 / (k*k*out_channels)); check on the largest conv.
    conv = max((m for m in net.modules() if isinstance(m, nn.Conv2d)), key=lambda c: c.weight.numel())
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2.0 / fan_out), rel=0.05)
    assert abs(conv.weight.mean().item()) < 0.01
