"""`ssrr import official`: files in the authors' format (torch.save of a dict of state_dicts, written here by
models built with the authors' module names) import into run folders that give the same outputs, and
another backbone, a truncated file or a foreign pickle is refused in one line with nothing written."""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torchvision
from fixtures_data import error_lines, run_ssrr
from torch import nn

from ssrr.config import RunConfig
from ssrr.errors import SsrrError
from ssrr.methods.base import method_class
from ssrr.official import import_official
from ssrr.train.checkpoint import CHECKPOINTS, MODEL_FILE, load_backbone, load_method_weights

# Tensors and parameters of each backbone in the authors' code (official-checkpoints.md).
OFFICIAL_SIZES = {
    "conv4": (24, 24648),
    "resnet8": (54, 77392),
    "resnet32": (198, 466256),
    "resnet56": (342, 855120),
    "resnet34": (216, 21284672),
}


class TheirConv4(nn.Module):
    """The authors' Conv4(flatten=True): layer{i} = conv, bn, ReLU, avg-pool 2 (the last a global average)."""

    def __init__(self) -> None:
        super().__init__()
        widths = (3, 8, 16, 32, 64)
        for i in range(4):
            pool = nn.AvgPool2d(2) if i < 3 else nn.AdaptiveAvgPool2d(1)
            layer = OrderedDict(
                conv=nn.Conv2d(widths[i], widths[i + 1], 3, padding=1, bias=False),
                bn=nn.BatchNorm2d(widths[i + 1]),
                relu=nn.ReLU(),
                pool=pool,
            )
            setattr(self, f"layer{i + 1}", nn.Sequential(layer))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4(self.layer3(self.layer2(self.layer1(x)))).flatten(1)


class TheirBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class TheirCifarResNet(nn.Module):
    """The authors' resnet_small.ResNet(BasicBlock, [n, n, n], channels=[16, 32, 64])."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages = []
        for cin, cout, stride in ((16, 16, 1), (16, 32, 2), (32, 64, 2)):
            stages.append(
                nn.Sequential(TheirBlock(cin, cout, stride), *(TheirBlock(cout, cout, 1) for _ in range(n - 1)))
            )
        self.layer1, self.layer2, self.layer3 = stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layer3(self.layer2(self.layer1(torch.relu(self.bn1(self.conv1(x))))))
        return h.mean(dim=(2, 3))


def their_resnet34() -> nn.Module:
    """resnet_large.ResNet(BasicBlock, [3, 4, 6, 3]): torchvision's layout without the classifier."""
    model = torchvision.models.resnet34()
    model.fc = nn.Identity()
    return model


THEIR_BACKBONES = {
    "conv4": TheirConv4,
    "resnet8": lambda: TheirCifarResNet(1),
    "resnet32": lambda: TheirCifarResNet(5),
    "resnet56": lambda: TheirCifarResNet(9),
    "resnet34": their_resnet34,
}


class TheirRelation(nn.Module):
    """relationnet's relation_module: linear1 -> bn1 -> LeakyReLU -> linear2."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(2 * dim, 256)
        self.bn1 = nn.BatchNorm1d(256)
        self.linear2 = nn.Linear(256, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(nn.functional.leaky_relu(self.bn1(self.linear1(x))))


def _randomise_statistics(module: nn.Module, seed: int) -> None:
    """Non-trivial BatchNorm affine and running statistics, so a mis-mapped buffer changes the output."""
    generator = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            size = m.num_features
            m.weight.data = 0.5 + torch.rand(size, generator=generator)
            m.bias.data = 0.1 * torch.randn(size, generator=generator)
            m.running_mean = 0.1 * torch.randn(size, generator=generator)  # type: ignore[assignment]
            m.running_var = 0.5 + torch.rand(size, generator=generator)  # type: ignore[assignment]
            m.num_batches_tracked.fill_(7)  # type: ignore[operator]


def write_official(path: Path, backbone: str, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """A checkpoint as the authors save it: torch.save({"backbone", "relation", "optimizer"})."""
    torch.manual_seed(seed)
    net, relation = THEIR_BACKBONES[backbone](), TheirRelation(512 if backbone == "resnet34" else 64)
    _randomise_statistics(net, seed)
    _randomise_statistics(relation, seed + 1)
    optimizer = torch.optim.Adam([*net.parameters(), *relation.parameters()], lr=1e-3)
    torch.save(
        {"backbone": net.state_dict(), "relation": relation.state_dict(), "optimizer": optimizer.state_dict()}, path
    )
    return net.eval(), relation.eval()


@pytest.mark.parametrize("backbone", ["conv4", "resnet8", "resnet56", "resnet34"])
def test_an_official_checkpoint_imports_and_gives_the_same_outputs(backbone: str, tmp_path: Path) -> None:
    net, relation = write_official(tmp_path / "relationnet.tar", backbone)
    tensors, params = OFFICIAL_SIZES[backbone]
    assert (len(net.state_dict()), sum(p.numel() for p in net.parameters())) == (tensors, params)  # their layout
    run_dir = import_official(tmp_path / "relationnet.tar", backbone, "imported", out=tmp_path / "runs")

    loaded = load_backbone(run_dir)
    assert loaded.name == backbone
    x = torch.randn(3, 3, 64, 64) if backbone == "resnet34" else torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ours, theirs = loaded.module.eval()(x), net(x)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)

    config = RunConfig.load(run_dir)
    method = method_class("relational")(config, load_backbone(f"random:{backbone}").module, 0)
    load_method_weights(method, run_dir / CHECKPOINTS / "step-00000000")
    pairs = torch.cat([theirs, theirs.flip(0)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(method.head.eval()(pairs), relation(pairs).squeeze(1), rtol=1e-5, atol=1e-5)
    info = json.loads((run_dir / "import.json").read_text())
    assert info["relation_head"] and info["optimizer_state"] and info["backbone"] == backbone


def test_the_cli_imports_and_every_eval_protocol_accepts_the_run(tiny_shards: Path, tmp_path: Path) -> None:
    write_official(tmp_path / "c.tar", "conv4")
    runs = tmp_path / "runs"
    result = run_ssrr("import", "official", tmp_path / "c.tar", "--backbone", "conv4", "--name", "off", "--out", runs)
    assert result.exit_code == 0, result.output
    evaluated = run_ssrr(
        "eval", "linear", runs / "off", "--dataset", tiny_shards, "--epochs", "1", "--device", "cpu", "--json"
    )
    assert evaluated.exit_code == 0, evaluated.output
    printed = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert printed["method"] == "relational" and printed["backbone"] == "conv4" and "top1" in printed
    assert (runs / "off" / "eval" / "linear-tiny-off-s1.json").is_file()


def _refused(file: Path, backbone: str, out: Path) -> str:
    result = run_ssrr("import", "official", file, "--backbone", backbone, "--name", "x", "--out", out)
    assert result.exit_code == 1
    (line,) = error_lines(result)
    assert not (out / "x").exists() and not (out.exists() and any(out.iterdir()))
    return line


def test_a_file_of_another_backbone_is_refused_naming_what_it_is(tmp_path: Path) -> None:
    write_official(tmp_path / "r32.tar", "resnet32")
    line = _refused(tmp_path / "r32.tar", "resnet56", tmp_path / "runs")
    assert "not a resnet56 checkpoint" in line and "it is a resnet32 checkpoint" in line
    assert "not a conv4 checkpoint" in _refused(tmp_path / "r32.tar", "conv4", tmp_path / "runs")


def test_a_truncated_file_is_refused(tmp_path: Path) -> None:
    write_official(tmp_path / "good.tar", "conv4")
    data = (tmp_path / "good.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: len(data) // 2])
    assert "not a readable torch checkpoint" in _refused(tmp_path / "cut.tar", "conv4", tmp_path / "runs")


class _RunsCode:
    """Unpickling this calls os.mkdir(marker): what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.mkdir, (str(self.marker),))


def test_a_foreign_pickle_is_refused_and_its_code_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    torch.save({"backbone": {"conv1.weight": torch.zeros(1)}, "payload": _RunsCode(marker)}, tmp_path / "evil.tar")
    line = _refused(tmp_path / "evil.tar", "conv4", tmp_path / "runs")
    assert "refused: not a plain checkpoint of tensors" in line and "mkdir" in line
    assert not marker.exists()


def test_an_existing_run_is_never_replaced(tmp_path: Path) -> None:
    write_official(tmp_path / "c.tar", "conv4")
    import_official(tmp_path / "c.tar", "conv4", "same", out=tmp_path)
    before = (tmp_path / "same" / "backbone.safetensors").read_bytes()
    with pytest.raises(SsrrError, match="already exists"):
        import_official(tmp_path / "c.tar", "conv4", "same", out=tmp_path)
    assert (tmp_path / "same" / "backbone.safetensors").read_bytes() == before
    assert (tmp_path / "same" / CHECKPOINTS / "step-00000000" / MODEL_FILE).is_file()


def test_a_file_without_a_relation_head_imports_its_backbone(tmp_path: Path) -> None:
    net, _ = write_official(tmp_path / "full.tar", "resnet8")
    torch.save({"backbone": net.state_dict(), "classifier": nn.Linear(64, 10).state_dict()}, tmp_path / "std.tar")
    run_dir = import_official(tmp_path / "std.tar", "resnet8", "std", out=tmp_path / "runs")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(load_backbone(run_dir).module.eval()(x), net(x), rtol=1e-5, atol=1e-5)
    assert json.loads((run_dir / "import.json").read_text())["relation_head"] is False
