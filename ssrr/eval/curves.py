"""Accuracy against pretraining wall time: the probes a run recorded (`--eval-every`, `--knn-every`) as curves.

Each run's `metrics.jsonl` holds, per epoch, `elapsed_s` (pretraining seconds so far, probe time excluded) and
the probes' values (`linear_top1`, `knn_top1`). `ssrr report RUN... --curves FILE.png` draws one line per run,
so presets and settings compare by what users plan by: accuracy reached at a given time.
"""

from __future__ import annotations

import json
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
