"""`--time-budget`: durations, the plan of steps from the run's pace, and runs that end within their budget."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from fixtures_data import error_lines, run_ssrr

from ssrr.config import RunConfig
from ssrr.errors import SsrrError
from ssrr.options import parse_duration
from ssrr.train.budget import RESERVE_FRACTION, TimeBudget
from ssrr.train.checkpoint import list_checkpoints, load_training_state
from ssrr.train.loop import pretrain


@pytest.mark.parametrize(("text", "seconds"), [("900", 900.0), ("900s", 900.0), ("15m", 900.0), ("0.25h", 900.0)])
def test_durations_in_seconds_minutes_and_hours(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "15x", "-5m", "0", "0s", "nan", "m", "1e3", "31d", "800h"])
def test_bad_durations_are_refused_naming_the_option(text: str) -> None:
    with pytest.raises(SsrrError, match="--time-budget"):
        parse_duration(text)


def test_the_plan_fits_what_is_left_at_the_pace_so_far() -> None:
    budget = TimeBudget(100.0, steps_per_epoch=10, cap_steps=1000, planned_steps=1000)
    planned = budget.plan(elapsed_s=10.0, steps_done=20)  # 0.5 s a step, 87 s usable left
    assert planned == 20 + int((100 * (1 - RESERVE_FRACTION) - 10) / 0.5)
    assert budget.epochs == -(-planned // 10)
    budget.end_reserve_s = 7.0  # time kept back for the BatchNorm recalibration
    assert budget.plan(10.0, 20) == planned - 14
    assert budget.plan(10.0, 20) < planned


def test_the_pace_leaves_out_the_first_step_and_the_schedule_waits_for_it_to_settle() -> None:
    budget = TimeBudget(100.0, steps_per_epoch=10, cap_steps=5000, planned_steps=5000)
    assert budget.plan(elapsed_s=5.0, steps_done=1) == 1 + int(92 / 5.0)  # one slow first step: cautious
    assert budget.total() == 5000  # not settled: the schedule runs as over the cap
    assert budget.plan(elapsed_s=6.0, steps_done=11) == 11 + round((97 - 6) / 0.1)  # 10 steps in 1 s after it
    assert budget.total() == budget.planned_steps  # settled: the schedule decays over the plan


def test_the_plan_stays_within_the_cap_and_never_below_the_steps_done() -> None:
    budget = TimeBudget(100.0, steps_per_epoch=10, cap_steps=30, planned_steps=30)
    assert budget.plan(150.0, 10) == 11  # one slow first step: one more step, to measure the pace
    assert budget.plan(150.5, 20) == 20 and budget.ended(20)  # over the budget: it ends now
    fast = TimeBudget(100.0, steps_per_epoch=10, cap_steps=30, planned_steps=30)
    assert fast.plan(1.0, 10) == 30  # fast: the epochs typed cap it


def test_plans_come_after_steps_1_2_4_8_then_every_50_and_at_epoch_ends() -> None:
    budget = TimeBudget(100.0, steps_per_epoch=1000, cap_steps=10_000, planned_steps=10_000)
    due = [step for step in range(1, 201) if budget.due(step, step, epoch_end=False)]
    assert due == [1, 2, 4, 8, 16, 32, 50, 64, 100, 128, 150, 200]
    assert budget.due(7, 7, epoch_end=True) and not budget.due(0, 0, epoch_end=True)
    budget.last_steps, budget.planned_steps = 300, 340  # near the planned end: halfway, then halfway again, ...
    assert [step for step in range(301, 341) if budget.due(step, step, epoch_end=False)][:1] == [320]
    budget.last_steps = 339
    assert budget.due(340, 340, epoch_end=False)  # the planned end: plan again, end only if no step fits


def test_a_resumed_plan_is_kept_not_measured_again() -> None:
    budget = TimeBudget.for_run(60.0, steps_per_epoch=10, cap_steps=500, saved={"planned_steps": 42})
    assert (budget.planned_steps, budget.fixed) == (42, True)
    assert not budget.due(50, 50, epoch_end=True)


def test_a_run_ends_within_its_budget_with_its_schedule_decayed(tiny_shards: Path, tmp_path: Path) -> None:
    config = RunConfig(
        dataset=str(tiny_shards), backbone="conv4", k=2, batch=32, epochs=200, out=str(tmp_path), name="b",
        num_threads=1, threads=1, lr_schedule="cosine", time_budget_s=5.0, keep_checkpoints=1, checkpoint_every=100,
    )  # fmt: skip
    result = pretrain(config, show=False)
    throughput = json.loads((result.run_dir / "throughput.json").read_text())
    lines = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert throughput["time_budget_s"] == 5.0 and throughput["planned_steps"] == result.steps
    print([(line["step"], line["elapsed_s"]) for line in lines])
    assert 8 < result.steps < 200 * 8  # planned from the pace: more than a few steps, far fewer than the cap
    assert lines[-1]["elapsed_s"] <= 5.0  # pretraining ended within the budget
    assert lines[-1]["step"] == result.steps and lines[-1]["lr"] < 0.05 * 1e-3  # the cosine reached ~0 at the end
    saved = load_training_state(list_checkpoints(result.run_dir)[-1])
    assert saved["budget"]["planned_steps"] == result.steps

    again = pretrain(replace(config, time_budget_s=600.0), resume=True, show=False)  # the saved plan is kept
    assert again.steps == result.steps


def test_cli_time_budget_is_saved_and_bad_values_are_one_line(tiny_shards: Path, tmp_path: Path) -> None:
    common = ["pretrain", "--dataset", tiny_shards, "--backbone", "conv4", "--k", "2", "--batch", "32"]
    result = run_ssrr(*common, "--time-budget", "0.05m", "--max-steps", "3", "--out", tmp_path, "--name", "t")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "t" / "config.json").read_text())["time_budget_s"] == 3.0
    refused = run_ssrr(*common, "--time-budget", "15x", "--out", tmp_path, "--name", "u")
    assert refused.exit_code != 0 and not (tmp_path / "u").exists()
    assert error_lines(refused) == [
        "Error: --time-budget must be a duration such as 900s, 15m or 0.25h (up to 30 days), got '15x'"
    ]


def test_reproduce_passes_the_budget_on() -> None:
    from ssrr.experiments.execution import pretrain_args

    args = pretrain_args(RunConfig(backbone="conv4", time_budget_s=90.0, name="x"))
    assert args[args.index("--time-budget") + 1] == "90s" and parse_duration("90s") == 90.0
