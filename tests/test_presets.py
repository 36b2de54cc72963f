"""`--preset paper|fast`, the learning-rate schedules and the crop option the fast preset uses."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from fixtures_data import error_lines, run_ssrr

from ssrr.config import RunConfig
from ssrr.errors import SsrrError
from ssrr.methods.base import method_class
from ssrr.models.backbones import build_backbone
from ssrr.presets import FAST, FAST_TIME_BUDGET_S, apply_preset, fast_view_side, preset_values
from ssrr.schedules import build_lr_scheduler, lr_factor, view_side


def test_constant_schedule_is_one_after_warmup() -> None:
    assert [lr_factor("constant", s, 100, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_factor("constant", 99, 100) == 1.0


def test_cosine_schedule_warms_up_then_decays_to_zero() -> None:
    total, warmup = 110, 10
    assert lr_factor("cosine", 0, total, warmup) == pytest.approx(0.1)
    assert lr_factor("cosine", warmup, total, warmup) == pytest.approx(1.0)
    assert lr_factor("cosine", warmup + 50, total, warmup) == pytest.approx(0.5)
    assert lr_factor("cosine", total, total, warmup) == pytest.approx(0.0, abs=1e-12)
    decay = [lr_factor("cosine", s, total, warmup) for s in range(warmup, total + 1)]
    assert all(a >= b for a, b in itertools.pairwise(decay))


def test_unknown_schedule_is_refused() -> None:
    with pytest.raises(SsrrError, match="lr-schedule"):
        lr_factor("step", 0, 10)


def test_scheduler_sets_the_optimizer_rate_each_step() -> None:
    weight = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.Adam([weight], lr=2e-3)
    assert build_lr_scheduler(optimizer, "constant", 10) is None  # the paper's runs carry no scheduler state
    scheduler = build_lr_scheduler(optimizer, "cosine", 10, 2)
    assert scheduler is not None
    seen = []
    for _ in range(10):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen[0] == pytest.approx(1e-3) and seen[1] == pytest.approx(2e-3)
    assert seen[-1] == pytest.approx(2e-3 * 0.5 * (1 + math.cos(math.pi * 7 / 8)))


def test_method_builds_the_runs_schedule() -> None:
    config = RunConfig(backbone="conv4", k=4, batch=8, epochs=3, lr_schedule="cosine", warmup_epochs=1.0)
    method = method_class("relational")(config, build_backbone("conv4"), 10)
    optimizer = method.build_optimizer()
    scheduler = method.build_scheduler(optimizer, steps_per_epoch=5)
    assert scheduler is not None
    for _ in range(15):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # 3 epochs x 5 steps: decayed to 0
    assert method_class("relational")(RunConfig(), build_backbone("conv4"), 10).build_scheduler(optimizer, 5) is None


def test_view_side_goes_linearly_from_first_to_last() -> None:
    assert [view_side(e, 5, 20, 32) for e in range(5)] == [20, 23, 26, 29, 32]
    assert [view_side(e, 3, 24, 24) for e in range(3)] == [24, 24, 24]
    assert view_side(0, 1, 20, 32) == 32  # a one-epoch run trains at the last side
    assert view_side(9, 5, 20, 32) == 32  # past the end (a longer resumed run): the last side


def test_view_sides_default_to_the_images_own() -> None:
    assert RunConfig().view_sides(32) == (32, 32)
    assert RunConfig(view_size=24).view_sides(32) == (24, 24)
    assert RunConfig(view_size=20, view_size_end=32).view_sides(96) == (20, 32)
    assert RunConfig(view_size_end=48).view_sides(96) == (96, 48)


def test_crop_min_reaches_the_recipe() -> None:
    cls = method_class("relational")
    assert cls.recipe(RunConfig(k=4)).crop_scale == (0.08, 1.0)  # the paper's
    assert cls.recipe(RunConfig(k=4, crop_min=0.25)).crop_scale == (0.25, 1.0)


@pytest.mark.parametrize(("field", "value"), [("crop_min", 0.0), ("crop_min", 1.5), ("lr_schedule", "step")])
def test_config_refuses_bad_schedule_and_crop(field: str, value: object) -> None:
    with pytest.raises(SsrrError, match=field.replace("_", "-")):
        RunConfig(**{field: value}).validate()


def test_paper_preset_is_the_papers_defaults() -> None:
    assert preset_values("paper") == {}
    config = RunConfig(k=32, epochs=200)
    assert apply_preset(config, set(), lambda: pytest.fail("data not needed")) == config
    defaults = RunConfig()
    assert (defaults.k, defaults.batch, defaults.epochs, defaults.lr_schedule) == (32, None, 200, "constant")


def test_fast_view_side_is_three_quarters_of_the_image() -> None:
    assert [fast_view_side(size) for size in ((32, 32), (64, 64), (96, 96), (1, 1))] == [24, 48, 72, 1]


def test_typed_options_override_the_fast_preset() -> None:
    base = RunConfig(preset="fast")
    values = apply_preset(base, set(), lambda: (32, 32))
    assert {key: getattr(values, key) for key in FAST} == FAST
    assert (values.time_budget_s, values.view_size, values.preset) == (FAST_TIME_BUDGET_S, 24, "fast")
    assert values.epochs == 200  # only a cap: the budget plans the steps
    typed = apply_preset(replace(base, k=4), {"k", "precision"}, lambda: (32, 32))
    assert (typed.k, typed.precision, typed.time_budget_s) == (4, "fp32", FAST_TIME_BUDGET_S)
    epochs = apply_preset(replace(base, epochs=3), {"epochs"}, lambda: (32, 32))
    assert (epochs.epochs, epochs.time_budget_s) == (3, None)  # typed epochs: no budget
    budget = apply_preset(replace(base, time_budget_s=60.0), {"time_budget_s"}, lambda: (32, 32))
    assert budget.time_budget_s == 60.0
    fixed = apply_preset(replace(base, view_size=40), {"epochs", "view_size"}, lambda: pytest.fail("typed"))
    assert fixed.view_size == 40


def test_cli_fast_preset_writes_its_values(tiny_shards: Path, tmp_path: Path) -> None:
    common = ["pretrain", "--preset", "fast", "--dataset", tiny_shards, "--backbone", "conv4", "--batch", "16"]
    result = run_ssrr(*common, "--max-steps", "2", "--out", tmp_path, "--name", "f", "--quiet")
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "f" / "config.json").read_text())
    assert saved["preset"] == "fast" and saved["k"] == FAST["k"] and saved["batch"] == 16  # --batch typed: it wins
    assert saved["lr_schedule"] == "cosine" and saved["precision"] == "auto"
    assert saved["view_size"] == 24 and saved["bn_recalibrate"] is True
    assert saved["time_budget_s"] == FAST_TIME_BUDGET_S
    lines = [json.loads(line) for line in (tmp_path / "f" / "metrics.jsonl").read_text().splitlines()]
    assert 0 < lines[-1]["lr"] < FAST["lr"]  # still warming up after 2 steps

    refused = run_ssrr("pretrain", "--preset", "quick", "--dataset", tiny_shards, "--out", tmp_path)
    assert refused.exit_code != 0
    assert error_lines(refused) == ["Error: --preset must be one of paper, fast, got 'quick'"]


def test_cli_view_size_ramps_and_is_logged(tiny_shards: Path, tmp_path: Path) -> None:
    result = run_ssrr(
        "pretrain", "--dataset", tiny_shards, "--backbone", "conv4", "--k", "2", "--batch", "64", "--epochs", "3",
        "--view-size", "16", "--view-size-end", "32", "--out", tmp_path, "--name", "v", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in (tmp_path / "v" / "metrics.jsonl").read_text().splitlines()]
    assert [line["view_size"] for line in lines] == [16, 24, 32]
    refused = run_ssrr("pretrain", "--dataset", tiny_shards, "--view-size", "-1", "--out", tmp_path)
    assert refused.exit_code != 0 and "view-size" in refused.output
