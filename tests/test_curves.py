"""Accuracy against wall time: curves read from runs' logs, drawn by `ssrr report --curves`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssrr.errors import SsrrError
from ssrr.eval.curves import find_curves, read_curve
from ssrr.train.progress import format_duration


def fake_run(folder: Path, points: list[tuple[float, float]]) -> Path:
    folder.mkdir(parents=True)
    lines = [{"epoch": i + 1, "elapsed_s": s, "linear_top1": v} for i, (s, v) in enumerate(points)]
    lines.insert(1, {"epoch": 9, "elapsed_s": 1.0})  # an epoch without a probe is skipped
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder


def test_a_curve_reads_the_probes_and_the_time_to_a_target(tmp_path: Path) -> None:
    curve = read_curve(fake_run(tmp_path / "a", [(10.0, 30.0), (20.0, 45.5), (30.0, 50.0)]))
    assert curve is not None and curve.metric == "linear_top1" and curve.seconds == [10.0, 20.0, 30.0]
    assert curve.time_to(45.0) == 20.0 and curve.time_to(60.0) is None


def test_report_draws_every_run_on_one_png(tmp_path: Path) -> None:
    from fixtures_data import run_ssrr

    fake_run(tmp_path / "runs" / "fast", [(5.0, 40.0), (10.0, 50.0)])
    fake_run(tmp_path / "runs" / "paper", [(10.0, 30.0), (20.0, 45.0)])
    assert [c.run for c in find_curves([tmp_path / "runs"])] == ["fast", "paper"]
    png = tmp_path / "curves.png"
    result = run_ssrr("report", tmp_path / "runs", "--curves", png)
    assert result.exit_code == 0, result.output
    image = np.asarray(Image.open(png).convert("RGB"))
    assert image.shape == (600, 900, 3) and image.std() > 0


def test_no_probe_in_any_run_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "loss": 1.0}) + "\n")
    with pytest.raises(SsrrError, match="--eval-every"):
        find_curves([tmp_path])


@pytest.mark.parametrize(
    ("seconds", "text"), [(42, "42s"), (425, "7m05s"), (3 * 3600 + 12 * 60, "3h12m"), (9 * 86400 + 4 * 3600, "9d04h")]
)
def test_time_left_reads_at_the_precision_a_plan_needs(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_final_groups_seeds_of_one_setting(tmp_path: Path) -> None:
    from fixtures_data import run_ssrr

    fake_run(tmp_path / "a" / "fast-s1", [(5.0, 40.0), (10.0, 50.0)])
    fake_run(tmp_path / "a" / "fast-s2", [(6.0, 41.0), (12.0, 54.0)])
    fake_run(tmp_path / "a" / "paper-s1", [(10.0, 30.0), (20.0, 45.0)])
    result = run_ssrr("report", tmp_path / "a", "--final", "--json")
    assert result.exit_code == 0, result.output
    groups = {g["group"]: g for g in json.loads(result.output)}
    assert groups["fast"]["runs"] == ["fast-s1", "fast-s2"] and groups["fast"]["top1"] == [50.0, 54.0]
    assert groups["fast"]["top1_mean"] == 52.0 and groups["fast"]["top1_std"] == 2.0
    assert groups["fast"]["pretrain_s_mean"] == 11.0 and groups["paper"]["top1"] == [45.0]
    table = run_ssrr("report", tmp_path / "a", "--final")
    assert table.exit_code == 0 and "52.00 ± 2.00" in table.output
