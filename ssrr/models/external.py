"""Backbones by name from torchvision (`tv:NAME`) and timm (`timm:NAME`), wrapped as ssrr `Backbone`s.

`tv:NAME` is any torchvision classification model (`torchvision.models.get_model(NAME, weights=None)`) with its
classifier (the last `nn.Linear`) replaced by `nn.Identity`, so the model returns its pooled features; the feature
size is that Linear's `in_features`. `timm:NAME` is `timm.create_model(NAME, pretrained=False, num_classes=0)`
(the optional `.[timm]` extra); the feature size is the model's `num_features`. No weights are ever downloaded.

The wrapped model is `ExternalBackbone.net`, so its state dict is torchvision's (or timm's) with a `net.` prefix
and without the classifier: `ssrr export` strips the prefix (ssrr/export.py).

Stems (`--stem`): `default` keeps the model's own; `cifar` (ResNet-style models: a `conv1` convolution and a
`maxpool`) makes the first convolution 3x3 stride 1 and drops the max-pool, as CIFAR ResNets do, so 32-64 px
images keep their resolution through the first stage.

Deep InfoMax's local feature maps are the output of the stem's activation (`relu` in torchvision ResNets, `act1`
in timm's), else of the model's first convolution, captured by a forward hook.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from ssrr.errors import SsrrError
from ssrr.models.backbones import Backbone
from ssrr.options import check_stem, require_feature

STEM_ACTIVATIONS = ("relu", "act1")  # torchvision ResNet stems, timm ResNet stems


class ExternalBackbone(Backbone):
    """A torchvision or timm model as an ssrr backbone: `feature_dim`, `local_channels`, `forward`,
    `forward_with_local` (see `ssrr.models.backbones.Backbone`)."""

    def __init__(self, net: nn.Module, feature_dim: int, spec: str, stem: str = "default") -> None:
        super().__init__()
        self.net = net
        self.feature_dim = int(feature_dim)
        self.spec = spec
        self.stem_kind = stem  # saved in the checkpoint's metadata, so loading rebuilds the same model
        self._local_module, self.local_channels = _local_module(net, spec)
        self._capturing = False  # only forward_with_local pays for keeping the stem's maps
        self._captured: Tensor | None = None
        self._local_module.register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, inputs: Any, output: Any) -> None:
        if self._capturing and self._captured is None and isinstance(output, Tensor) and output.dim() == 4:
            self._captured = output.clone()  # a later in-place op must not change what the critic scores

    def forward(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) -> (N, D)."""
        out = self.net(x)
        if not isinstance(out, Tensor):  # a model returning (logits, aux...): keep the first
            out = out[0]
        return out.flatten(1)

    def forward_with_local(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(N, 3, H, W) -> (the stem's feature maps, representation (N, D))."""
        self._capturing, self._captured = True, None
        try:
            z = self.forward(x)
        finally:
            self._capturing = False
        local, self._captured = self._captured, None
        if local is None:
            raise SsrrError(f"{self.spec}: no 4-D feature maps from its stem for Deep InfoMax")
        return local, z


def _local_module(net: nn.Module, spec: str) -> tuple[nn.Module, int]:
    """The module whose output is the local feature maps, and their channel count."""
    first_conv = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
    if first_conv is None:
        raise SsrrError(f"{spec}: has no convolution; not an image backbone ssrr can train")
    if isinstance(getattr(net, "conv1", None), nn.Module):
        for name in STEM_ACTIVATIONS:
            module = getattr(net, name, None)
            if isinstance(module, nn.Module):
                return module, first_conv.out_channels
    return first_conv, first_conv.out_channels


def _remove_classifier(net: nn.Module, spec: str) -> int:
    """Replace the model's last Linear (its classifier) by Identity; return the feature size it took."""
    last = None
    for name, module in net.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last is None:
        raise SsrrError(f"{spec}: no Linear classifier to remove (ssrr takes classification models)")
    parent_name, _, child = last.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    linear = getattr(parent, child)
    setattr(parent, child, nn.Identity())
    return int(linear.in_features)


def apply_cifar_stem(net: nn.Module, spec: str) -> None:
    """conv1 -> 3x3 stride 1 pad 1 (same channels), maxpool -> Identity; only for ResNet-style models."""
    conv = getattr(net, "conv1", None)
    if not isinstance(conv, nn.Conv2d) or not isinstance(getattr(net, "maxpool", None), nn.Module):
        raise SsrrError(f"--stem cifar: {spec} has no ResNet-style stem (a conv1 convolution and a maxpool)")
    net.conv1 = nn.Conv2d(conv.in_channels, conv.out_channels, 3, stride=1, padding=1, bias=conv.bias is not None)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.maxpool = nn.Identity()


def torchvision_model(name: str) -> nn.Module:
    """`torchvision.models.get_model(name, weights=None)`, whole (classifier included); unknown names: SsrrError."""
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        raise SsrrError(f"tv:{name}: not a torchvision classification model (e.g. {', '.join(known[:6])}, ...)")
    no_aux = name in ("googlenet", "inception_v3")  # their auxiliary classifiers would be unused parameters
    kwargs: dict[str, Any] = {"aux_logits": False, "init_weights": True} if no_aux else {}
    return torchvision.models.get_model(name, weights=None, **kwargs)


def timm_model(name: str) -> nn.Module:
    """`timm.create_model(name, pretrained=False, num_classes=0)`; no timm: the one-line extra error."""
    require_feature("timm", f"timm:{name}")
    timm = importlib.import_module("timm")
    if not timm.is_model(name):
        raise SsrrError(f"timm:{name}: not a timm model (timm.list_models() names them)")
    return timm.create_model(name, pretrained=False, num_classes=0)


def _build_torchvision(name: str, stem: str) -> ExternalBackbone:
    net = torchvision_model(name)
    dim = _remove_classifier(net, f"tv:{name}")
    if stem == "cifar":
        apply_cifar_stem(net, f"tv:{name}")
    return ExternalBackbone(net, dim, f"tv:{name}", stem)


def _build_timm(name: str, stem: str) -> ExternalBackbone:
    net = timm_model(name)
    if stem == "cifar":
        apply_cifar_stem(net, f"timm:{name}")
    return ExternalBackbone(net, int(getattr(net, "num_features")), f"timm:{name}", stem)  # noqa: B009 (typed Any)


# The prefix of a backbone name -> its builder (name without the prefix, stem).
FAMILIES: dict[str, Callable[[str, str], ExternalBackbone]] = {"tv": _build_torchvision, "timm": _build_timm}


def build_external(spec: str, stem: str = "default") -> ExternalBackbone:
    """`tv:NAME` or `timm:NAME` with the given stem, freshly initialised (no download)."""
    family, _, name = spec.partition(":")
    if family not in FAMILIES or not name:
        families = " or ".join(f"{f}:NAME" for f in FAMILIES)
        raise SsrrError(f"unknown backbone {spec!r} (external backbones are {families})")
    check_stem(stem)
    return FAMILIES[family](name, stem)


def is_external(spec: str) -> bool:
    """Whether a backbone name is a `family:NAME` one."""
    return spec.partition(":")[0] in FAMILIES
