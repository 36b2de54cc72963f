"""BatchNorm recalibration (`ssrr.models.batchnorm`) and `ssrr pretrain --bn-recalibrate`."""

from __future__ import annotations

from pathlib import Path

import torch
from fixtures_data import run_ssrr
from safetensors.torch import load_file
from ssrr.pipelines import recipes
from ssrr.pipelines.loader import ViewLoader
from torch import nn

from ssrr.models.batchnorm import batchnorm_layers, recalibrate_batchnorm
from ssrr.precision import resolve
from ssrr.train.checkpoint import load_backbone


def test_statistics_become_those_of_the_batches() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4))
    net.eval()
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k}
    batches = [torch.randn(8, 3, 5, 5) * 3 + 2 for _ in range(4)]
    assert recalibrate_batchnorm(net, batches) == 4
    bn = net[1]
    with torch.no_grad():
        acts = [net[0](b) for b in batches]
    expected_mean = torch.stack([a.mean(dim=(0, 2, 3)) for a in acts]).mean(0)
    expected_var = torch.stack([a.var(dim=(0, 2, 3), unbiased=True) for a in acts]).mean(0)
    torch.testing.assert_close(bn.running_mean, expected_mean)
    torch.testing.assert_close(bn.running_var, expected_var)
    assert not net.training and bn.momentum == 0.1  # mode and momentum as they were
    for key, value in weights.items():
        assert torch.equal(net.state_dict()[key], value), key


def test_no_batches_leaves_the_statistics() -> None:
    bn = nn.BatchNorm1d(3)
    bn.running_mean.fill_(0.5)
    assert recalibrate_batchnorm(bn, []) == 0
    assert torch.equal(bn.running_mean, torch.full((3,), 0.5)) and bn.momentum == 0.1
    assert recalibrate_batchnorm(nn.Linear(2, 2), [torch.ones(1, 2)]) == 0  # nothing to recalibrate
    assert batchnorm_layers(nn.BatchNorm1d(3, track_running_stats=False)) == []


def test_pretrain_recalibrates_after_the_last_epoch(tiny_shards: Path, tmp_path: Path) -> None:
    """Same seed with and without --bn-recalibrate: the same weights; the statistics of the recalibrated run
    are those of the clean training images at their own size, computed on the other run's backbone."""
    common = ["pretrain", "--dataset", tiny_shards, "--backbone", "conv4", "--k", "2", "--batch", "32"]
    common += ["--epochs", "1", "--view-size", "24", "--out", tmp_path, "--quiet"]
    for name, flag in (("plain", "--no-bn-recalibrate"), ("recal", "--bn-recalibrate")):
        result = run_ssrr(*common, "--name", name, flag)
        assert result.exit_code == 0, result.output
    plain = load_file(str(tmp_path / "plain" / "backbone.safetensors"))
    recal = load_file(str(tmp_path / "recal" / "backbone.safetensors"))
    stats = [key for key in plain if "running" in key]
    assert stats and all(torch.equal(plain[k], recal[k]) for k in plain if k not in stats and "num_batches" not in k)
    assert not all(torch.allclose(plain[k], recal[k]) for k in stats)
    backbone = load_backbone(str(tmp_path / "plain")).module
    # The views the run's loader delivered: bf16 under SSRR_PRECISION=bf16 (the run's precision), else float32.
    dtype = resolve("fp32", "cpu").view_dtype
    loader = ViewLoader(tiny_shards, recipes.evaluation(), split="train", batch_size=32, training=False, dtype=dtype)
    recalibrate_batchnorm(backbone, (batch.views.float() for batch in loader.epoch(0)))
    for key in stats:
        torch.testing.assert_close(backbone.state_dict()[key], recal[key], rtol=1e-4, atol=1e-5)
