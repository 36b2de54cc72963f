"""Backbones f: images (N, 3, H, W) -> representations (N, D).

Every backbone is a `Backbone`: it has `feature_dim` (D), `local_channels` (the channel count of its first
block's feature maps), `forward(x) -> (N, D)` and `forward_with_local(x) -> (local_maps, z)` where
`local_maps` is the output of the first convolution + BatchNorm + ReLU (before any pooling), the feature
maps Deep InfoMax scores against the global representation `z`.

Registry: `BACKBONES[name]()` builds one of the paper's; `build_backbone(name, stem)` builds those and any
torchvision (`tv:NAME`) or timm (`timm:NAME`) model (ssrr/models/external.py), with a clear error for an
unknown name. Parameter counts (exact, checked by the tests): conv4 24,648; resnet8 77,392; resnet32 466,256;
resnet56 855,120; resnet34 21,284,672.

Initialisation (all backbones): convolutions He-normal with fan-out (`kaiming_normal_`, mode="fan_out",
nonlinearity="relu"), BatchNorm weight 1 and bias 0.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ssrr.errors import SsrrError

__all__ = [
    "BACKBONES",
    "Backbone",
    "BasicBlock",
    "CifarResNet",
    "Conv4",
    "ResNet34",
    "build_backbone",
]


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _init_weights(module: nn.Module) -> None:
    """He-normal fan-out for convolutions, BatchNorm weight 1 and bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _global_pool(x: Tensor) -> Tensor:
    """Global average pool (N, C, H, W) -> (N, C); works for both memory formats."""
    return x.mean(dim=(2, 3))


class Backbone(nn.Module):
    """Base class: `feature_dim` (D), `local_channels`, `forward` and `forward_with_local`.

    Subclasses implement `stem(x)` (the first block's conv + BN + ReLU, giving the local feature maps) and
    `trunk(local_maps) -> (N, D)` (everything after, including the global pool).
    """

    feature_dim: int
    local_channels: int

    def stem(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def trunk(self, local_maps: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) -> (N, D)."""
        return self.trunk(self.stem(x))

    def forward_with_local(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(N, 3, H, W) -> (first block's feature maps (N, local_channels, h, w), representation (N, D))."""
        local_maps = self.stem(x)
        return local_maps, self.trunk(local_maps)


class Conv4(Backbone):
    """Conv-4: four blocks of [conv3x3 pad 1 no bias, BN, ReLU, avgpool 2], channels 3->8->16->32->64; the
    last block's pool is a global average. D = 64, 24,648 parameters."""

    def __init__(self) -> None:
        super().__init__()
        widths = (3, 8, 16, 32, 64)
        self.convs = nn.ModuleList(_conv3x3(widths[i], widths[i + 1]) for i in range(4))
        self.bns = nn.ModuleList(nn.BatchNorm2d(widths[i + 1]) for i in range(4))
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)
        self.feature_dim = widths[-1]
        self.local_channels = widths[1]
        _init_weights(self)

    def stem(self, x: Tensor) -> Tensor:
        return torch.relu_(self.bns[0](self.convs[0](x)))

    def trunk(self, local_maps: Tensor) -> Tensor:
        h = self.pool(local_maps)
        for i in (1, 2):
            h = self.pool(torch.relu_(self.bns[i](self.convs[i](h))))
        h = torch.relu_(self.bns[3](self.convs[3](h)))
        return _global_pool(h)


class BasicBlock(nn.Module):
    """Two conv3x3-BN layers with a residual connection; a 1x1 conv + BN shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu_(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return torch.relu_(out)


def _stage(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [BasicBlock(cin, cout, stride)]
    layers += [BasicBlock(cout, cout) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class CifarResNet(Backbone):
    """CIFAR ResNet-(6n+2): conv3x3 3->16 + BN + ReLU, three stages of n BasicBlocks with 16/32/64 channels and
    strides 1/2/2, global average pool. D = 64. n=1: ResNet-8, n=5: ResNet-32, n=9: ResNet-56."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(3, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = _stage(16, 16, n, 1)
        self.layer2 = _stage(16, 32, n, 2)
        self.layer3 = _stage(32, 64, n, 2)
        self.feature_dim = 64
        self.local_channels = 16
        _init_weights(self)

    def stem(self, x: Tensor) -> Tensor:
        return torch.relu_(self.bn1(self.conv1(x)))

    def trunk(self, local_maps: Tensor) -> Tensor:
        return _global_pool(self.layer3(self.layer2(self.layer1(local_maps))))


class ResNet34(Backbone):
    """ResNet-34 (ImageNet-style: four stages of [3, 4, 6, 3] BasicBlocks, 64/128/256/512 channels, strides
    1/2/2/2, global average pool; D = 512, 21,284,672 parameters) for the larger images (STL-10 at 96 px,
    tiny-ImageNet and SlimageNet at 64 px).

    Stem: the standard one, conv 7x7 stride 2 pad 3 (3->64) + BN + ReLU, then max-pool 3x3 stride 2 pad 1, as
    the authors' public implementation (torchvision's layout without the classifier). The local feature maps
    for Deep InfoMax are the stem's ReLU output, before the max-pool (64 channels, H/2 x W/2).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = _stage(64, 64, 3, 1)
        self.layer2 = _stage(64, 128, 4, 2)
        self.layer3 = _stage(128, 256, 6, 2)
        self.layer4 = _stage(256, 512, 3, 2)
        self.feature_dim = 512
        self.local_channels = 64
        _init_weights(self)

    def stem(self, x: Tensor) -> Tensor:
        return torch.relu_(self.bn1(self.conv1(x)))

    def trunk(self, local_maps: Tensor) -> Tensor:
        h = self.maxpool(local_maps)
        h = self.layer4(self.layer3(self.layer2(self.layer1(h))))
        return _global_pool(h)


BACKBONES: dict[str, Callable[[], Backbone]] = {
    "conv4": Conv4,
    "resnet8": lambda: CifarResNet(1),
    "resnet32": lambda: CifarResNet(5),
    "resnet56": lambda: CifarResNet(9),
    "resnet34": ResNet34,
}


def build_backbone(name: str, stem: str = "default") -> Backbone:
    """Build a freshly initialised backbone by name: one of the paper's (`BACKBONES`), or `tv:NAME` / `timm:NAME`
    (ssrr/models/external.py) with `stem` (default | cifar); an unknown name raises `SsrrError` listing the known
    ones."""
    from ssrr.models.external import build_external, is_external

    if is_external(name):
        return build_external(name, stem)
    if name not in BACKBONES:
        raise SsrrError(f"unknown backbone {name!r} (known: {', '.join(BACKBONES)}, tv:NAME, timm:NAME)")
    if stem != "default":
        raise SsrrError(f"--stem {stem}: for tv:NAME and timm:NAME backbones; {name} has its own stem")
    return BACKBONES[name]()
