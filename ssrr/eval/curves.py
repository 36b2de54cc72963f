"""Accuracy against pretraining wall time: the probes a run recorded (`--eval-every`, `--knn-every`) as curves.

Each run's `metrics.jsonl` holds, per epoch, `elapsed_s` (pretraining seconds so far, probe time excluded) and
the probes' values (`linear_top1`, `knn_top1`). `ssrr report RUN... --curves FILE.png` draws one line per run,
so presets and settings compare by what users plan by: accuracy reached at a given time. `final_groups` gives
each setting's last probe over seeds (`ssrr report RUN... --final`, the ablations of docs/fast.md).
"""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

from ssrr.errors import SsrrError
from ssrr.eval.common import new_figure, save_figure

PROBE_KEYS = ("linear_top1", "knn_top1")
METRICS_FILE = "metrics.jsonl"


@dataclass
class Curve:
    """One run's probe values against its pretraining time."""

    run: str
    metric: str
    seconds: list[float]
    values: list[float]

    def time_to(self, target: float) -> float | None:
        """Pretraining seconds at the first probe reaching `target`, or None if none did."""
        return next((s for s, v in zip(self.seconds, self.values, strict=True) if v >= target), None)


def read_curve(run_dir: Path, metric: str | None = None) -> Curve | None:
    """The run's curve of `metric` (default: the first of linear_top1, knn_top1 it recorded), or None."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return None
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    keys = [metric] if metric else list(PROBE_KEYS)
    for key in keys:
        points = [(r["elapsed_s"], r[key]) for r in records if key in r and "elapsed_s" in r]
        if points:
            return Curve(run_dir.name, key, [s for s, _ in points], [v for _, v in points])
    return None


def find_curves(paths: list[str | Path], metric: str | None = None) -> list[Curve]:
    """Curves of every run folder given or found below the paths (a folder holding metrics.jsonl is a run)."""
    runs: list[Path] = []
    for path in map(Path, paths):
        runs += [path] if (path / METRICS_FILE).is_file() else sorted(p.parent for p in path.rglob(METRICS_FILE))
    curves = [curve for run in runs if (curve := read_curve(run, metric)) is not None]
    if not curves:
        raise SsrrError(f"no run under {', '.join(map(str, paths))} recorded a probe: pretrain with --eval-every N")
    return curves


def curves_png(curves: list[Curve], path: Path) -> Path:
    """One line per run: probe top-1 (%) against pretraining minutes; 900 x 600 pixels."""
    fig = new_figure(9, 6)
    ax = fig.add_subplot()
    for curve in curves:
        ax.plot([s / 60 for s in curve.seconds], curve.values, marker="o", label=f"{curve.run} ({curve.metric})")
    ax.set_xlabel("pretraining wall time (minutes, probes excluded)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("accuracy against wall time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


@dataclass
class FinalGroup:
    """The last probe value of the runs of one setting (run names that differ only in a `-sN` seed suffix)."""

    group: str
    metric: str
    runs: list[str]
    values: list[float]  # the last probe of each run
    seconds: list[float]  # the pretraining time of that probe

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        """Population standard deviation over the runs (0 for one run), as the report's cells."""
        return statistics.pstdev(self.values)

    @property
    def pretrain_s(self) -> float:
        """The mean pretraining time of the last probes."""
        return statistics.fmean(self.seconds)

    def as_dict(self) -> dict[str, object]:
        return {
            "group": self.group,
            "metric": self.metric,
            "runs": self.runs,
            "top1": self.values,
            "top1_mean": round(self.mean, 3),
            "top1_std": round(self.std, 3),
            "pretrain_s_mean": round(self.pretrain_s, 1),
        }


def final_groups(curves: list[Curve]) -> list[FinalGroup]:
    """Each run's last probe, grouped by the run name without its seed suffix (`fast-s1`, `fast-s2` -> `fast`)."""
    groups: dict[tuple[str, str], FinalGroup] = {}
    for curve in curves:
        name = re.sub(r"-s\d+$", "", curve.run)
        group = groups.setdefault((name, curve.metric), FinalGroup(name, curve.metric, [], [], []))
        group.runs.append(curve.run)
        group.values.append(curve.values[-1])
        group.seconds.append(curve.seconds[-1])
    return list(groups.values())
