"""Every precision on any CPU: the rules of `--precision`/`--amp`, and every method and protocol run in each.

Nothing here depends on the host CPU: the capability checks are replaced where a rule is tested, and the bf16 and
fp16 paths are forced (bf16 is emulated, slowly but correctly, on CPUs without native bf16).
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from accelerate.utils import set_seed
from safetensors.torch import load_file

import ssrr.precision as precision_module
from ssrr.errors import SsrrError
from ssrr.eval.finetune import finetune
from ssrr.eval.knn import knn_eval
from ssrr.eval.linear import linear_eval
from ssrr.eval.retrieval import retrieval_eval
from ssrr.eval.semi import semi_eval
from ssrr.eval.tsne import tsne_eval
from ssrr.methods import METHODS
from ssrr.models.backbones import build_backbone
from ssrr.precision import ENV_OVERRIDE, Execution, fp16_supported, resolve
from ssrr.train.checkpoint import load_backbone
from ssrr.train.config import RunConfig
from ssrr.train.loop import pretrain

CPU = torch.device("cpu")
FP16 = pytest.param(
    "fp16", marks=pytest.mark.skipif(not fp16_supported(CPU), reason="torch has no CPU fp16 autocast here")
)
PRECISIONS = ["fp32", "bf16", FP16]


@pytest.fixture(autouse=True)
def no_override(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests name their precisions: a suite-wide SSRR_PRECISION must not replace them."""
    monkeypatch.delenv(ENV_OVERRIDE, raising=False)


@pytest.mark.parametrize("native", [True, False])
def test_auto_is_bf16_only_where_native_on_the_cpu(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    monkeypatch.setattr(precision_module, "native_bf16", lambda device: native)
    execution = resolve("auto", "cpu")
    assert execution.precision == ("bf16" if native else "fp32")
    assert execution.view_dtype == (torch.bfloat16 if native else torch.float32)
    assert execution.requested == "auto" and execution.native


def test_forced_bf16_runs_where_it_is_emulated_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision_module, "native_bf16", lambda device: False)
    execution = resolve("bf16", "cpu")
    assert execution.precision == "bf16" and not execution.native
    assert "emulated" in execution.describe()
    assert execution.record()["precision_native"] is False


def test_fp16_where_torch_cannot_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision_module, "fp16_supported", lambda device: False)
    with pytest.raises(SsrrError, match="fp16") as error:
        resolve("fp16", "cpu")
    assert "\n" not in str(error.value)


def test_an_unknown_precision_is_refused() -> None:
    with pytest.raises(SsrrError, match="--precision must be one of"):
        resolve("fp8", "cpu")


def test_the_environment_replaces_every_requested_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_OVERRIDE, "bf16")
    execution = resolve("fp32", "cpu")
    assert execution.precision == "bf16" and execution.source == "environment"
    assert ENV_OVERRIDE in execution.describe()


def test_bf16_views_meet_float32_weights_only_inside_autocast() -> None:
    backbone = build_backbone("conv4").eval()
    views = torch.randn(4, 3, 32, 32).to(torch.bfloat16)
    with pytest.raises(RuntimeError):  # the bug this module exists to prevent
        backbone(views)
    z = Execution(CPU, "bf16").forward(backbone, views)
    assert z.dtype == torch.float32 and z.shape == (4, 64) and torch.isfinite(z).all()


def test_fp16_has_loss_scaling_and_the_others_none() -> None:
    assert Execution(CPU, "fp16").grad_scaler() is not None
    assert Execution(CPU, "bf16").grad_scaler() is None and Execution(CPU, "fp32").grad_scaler() is None


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains_in_every_precision(method: str, precision: str, tiny_shards: Path, tmp_path: Path) -> None:
    config = RunConfig(
        method=method,
        dataset=str(tiny_shards),
        backbone="conv4",
        k=3,
        batch=32,
        epochs=1,
        max_steps=2,
        precision=precision,
        out=str(tmp_path),
        name="run",
        seed=5,
        num_threads=1,
    )
    run = pretrain(config, show=False)
    environment = json.loads((run.run_dir / "environment.json").read_text())
    assert environment["precision"] == precision
    losses = [json.loads(line)["loss"] for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert losses and all(math.isfinite(loss) for loss in losses)
    set_seed(config.seed)  # the loop builds the backbone right after seeding: the same initial weights
    initial = build_backbone("conv4").state_dict()
    trained = load_file(str(run.run_dir / "backbone.safetensors"))
    changed = [
        key for key, value in initial.items() if value.is_floating_point() and not torch.equal(value, trained[key])
    ]
    assert changed, "no weight moved"
    assert all(torch.isfinite(value).all() for value in trained.values())


def test_an_fp16_run_resumes_to_the_same_weights_loss_scale_included(tiny_shards: Path, tmp_path: Path) -> None:
    if not fp16_supported(CPU):
        pytest.skip("torch has no CPU fp16 autocast here")
    base = RunConfig(
        dataset=str(tiny_shards), backbone="conv4", k=3, batch=32, epochs=1, precision="fp16", name="run", seed=3
    )
    straight = pretrain(replace(base, out=str(tmp_path / "a"), num_threads=1), show=False)
    pretrain(replace(base, out=str(tmp_path / "b"), num_threads=1, max_steps=3), show=False)
    resumed = pretrain(replace(base, out=str(tmp_path / "b"), num_threads=1), resume=True, show=False)
    a = load_file(str(straight.run_dir / "backbone.safetensors"))
    b = load_file(str(resumed.run_dir / "backbone.safetensors"))
    assert all(torch.equal(a[key], b[key]) for key in a)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_every_evaluation_protocol_runs_in_every_precision(precision: str, tiny_shards: Path, tmp_path: Path) -> None:
    def backbone():  # type: ignore[no-untyped-def]
        torch.manual_seed(0)
        return load_backbone("random:conv4")

    common = {"device": "cpu", "precision": precision, "out": tmp_path}
    results = [
        linear_eval(backbone(), tiny_shards, epochs=2, **common),
        knn_eval(backbone(), tiny_shards, **common),
        retrieval_eval(backbone(), tiny_shards, **common),
        tsne_eval(backbone(), tiny_shards, points=40, iterations=20, **common),
        semi_eval(backbone(), tiny_shards, fractions=[0.5, 1.0], epochs=2, **common),
        finetune(backbone(), tiny_shards, epochs=1, batch=64, **common),
    ]
    for result in results:
        assert result["precision"] == precision, result["protocol"]
    for result in (results[0], results[1], results[5]):
        assert 0 <= result["top1"] <= 100 and math.isfinite(result["top1"])


def test_bench_methods_runs_under_forced_bf16(tmp_path: Path) -> None:
    from ssrr.bench.methods import bench_methods
    from ssrr.data.sources import load_dataset
    from ssrr.data.writer import write_dataset

    write_dataset(load_dataset("synthetic", train_per_class=12, test_per_class=2), tmp_path)
    result = bench_methods(tmp_path / "synthetic", k=3, m=8, steps=1, repeats=1, warmup=1, precision="bf16")
    assert result["precision"] == "bf16" and set(result["methods"]) == set(METHODS)
    assert all(r["views_per_s"] > 0 for r in result["methods"].values())
