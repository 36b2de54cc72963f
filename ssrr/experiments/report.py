"""The report: results gathered into the paper's tables (markdown) and figures, in <runs>/report-NAME/."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ssrr.eval.report import Cell, Table, columns_of, friendly, to_markdown
from ssrr.experiments.planning import Entry, Plan, _read_json, status
from ssrr.experiments.tables import FIGURE_DPI, FIGURE_FILES, FIGURE_SIZE_IN
from ssrr.files import replacing, write_text_atomic

# -------------------------------------------------------------------------------------------- report


def _result(entry: Entry) -> dict[str, Any] | None:
    result = _read_json(entry.result)
    return result if result is not None and "protocol" in result else None


def build_tables(plan: Plan) -> dict[str, Table]:
    """Each named table as an `ssrr.eval.report.Table`: rows from the description, cells from the results.

    Results are placed by their dataset *slot* (so at the tiny scale, where every slot reads the synthetic
    data, the paper's columns still fill), mean and population std over seeds as in `ssrr report`.
    """
    built: dict[str, Table] = {}
    for spec in plan.tables:
        rows: list[tuple[str, str]] = []
        cells: dict[tuple[str, str], dict[str, Cell]] = {}
        seen: set[tuple[tuple[str, str], str, Path]] = set()
        sources: set[Path] = set()
        for entry in (e for e in plan.entries if e.table == spec.name):
            if entry.row not in cells:
                rows.append(entry.row)
                cells[entry.row] = {}
            result = _result(entry)
            if result is None:
                continue
            placed = {**result, "dataset": entry.evaluation.dataset, "labels": entry.evaluation.labels}
            pretraining = entry.experiment.pretraining
            for column, value in columns_of(placed, pretraining.dataset if pretraining else None):
                if (entry.row, column, entry.result) in seen:
                    continue
                seen.add((entry.row, column, entry.result))
                sources.add(entry.result)
                cells[entry.row].setdefault(column, Cell()).values.append(float(value))
        extra = sorted({c for row in cells.values() for c in row} - set(spec.columns))
        built[spec.name] = Table([*spec.columns, *extra], rows, cells, len(sources))
    return built


def _series(plan: Plan, table: str, key: Callable[[Entry, dict[str, Any]], Iterable[tuple[Any, Any, float]]]):  # type: ignore[no-untyped-def]
    """{series: {x: Cell}} over a table's results; `key` turns (entry, result) into (series, x, value)s."""
    out: dict[Any, dict[Any, Cell]] = {}
    for entry in (e for e in plan.entries if e.table == table):
        result = _result(entry)
        if result is None:
            continue
        for series, x, value in key(entry, result):
            out.setdefault(series, {}).setdefault(x, Cell()).values.append(float(value))
    return out


def _data_note(plan: Plan) -> str:
    return f" ({plan.scale.dataset} data)" if plan.scale.dataset else ""


def _scale_note(plan: Plan) -> str:
    return "" if plan.scale.name == "full" else f"  [scale {plan.scale.name}]"


def figure_k(plan: Plan, path: Path) -> Path | None:
    """Linear top-1 versus K (log2 axis), one line per (method, backbone, dataset), mean ± std over seeds."""

    def key(entry: Entry, result: dict[str, Any]) -> Iterable[tuple[Any, Any, float]]:
        pre = entry.experiment.pretraining
        if pre is None or not isinstance(result.get("top1"), (int, float)):
            return []
        return [((entry.row[1], entry.evaluation.dataset), pre.k, result["top1"])]

    data = _series(plan, "k", key)
    if not data:
        return None
    fig = _figure("k")
    ax = fig.add_subplot()
    ticks: set[int] = set()
    for (backbone, dataset), points in sorted(data.items()):
        xs = sorted(points)
        ticks.update(xs)
        ys = [points[x].mean for x in xs]
        label = f"{backbone}, {friendly(dataset)}{_data_note(plan)}"
        ax.errorbar(xs, ys, yerr=[points[x].std for x in xs], marker="o", capsize=4, label=label)
        for x, y in zip(xs, ys, strict=True):
            ax.annotate(f"{y:.1f}", (x, y), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(ticks), [str(t) for t in sorted(ticks)])
    ax.set_xlabel("K (augmentations per image)")
    ax.set_ylabel("linear evaluation top-1 (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"Relational reasoning: accuracy versus K (mean ± std over seeds){_scale_note(plan)}", fontsize=10)
    return _save(fig, path)


def figure_labels(plan: Plan, path: Path) -> Path | None:
    """Top-1 versus the labelled fraction (log axis), one line per method, mean ± std over seeds."""

    def key(entry: Entry, result: dict[str, Any]) -> Iterable[tuple[Any, Any, float]]:
        fractions = result.get("fractions")
        if not isinstance(fractions, dict):
            return []
        return [(entry.row[0], float(f), v) for f, v in fractions.items() if isinstance(v, (int, float))]

    data = _series(plan, "labels", key)
    if not data:
        return None
    fig = _figure("labels")
    ax = fig.add_subplot()
    ticks: set[float] = set()
    for label, points in data.items():
        xs = sorted(points)
        ticks.update(xs)
        percent = [100 * x for x in xs]
        ax.errorbar(
            percent, [points[x].mean for x in xs], yerr=[points[x].std for x in xs], marker="o", capsize=4, label=label
        )
    ax.set_xscale("log")
    ax.set_xticks([100 * t for t in sorted(ticks)], [f"{100 * t:g}%" for t in sorted(ticks)])
    ax.set_xlabel("labelled training samples")
    ax.set_ylabel("test top-1 (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"Accuracy versus available labels (mean ± std over seeds){_scale_note(plan)}", fontsize=10)
    return _save(fig, path)


def figure_backbones(plan: Plan, path: Path) -> Path | None:
    """Grouped bars: per method, one bar per backbone; one panel per dataset; mean ± std over seeds."""

    def key(entry: Entry, result: dict[str, Any]) -> Iterable[tuple[Any, Any, float]]:
        if not isinstance(result.get("top1"), (int, float)):
            return []
        return [(entry.evaluation.dataset, (entry.row[0], entry.row[1]), result["top1"])]

    data = _series(plan, "backbones", key)
    if not data:
        return None
    import numpy as np

    fig = _figure("backbones")
    datasets = [d for d in ("cifar10", "cifar100") if d in data] + sorted(set(data) - {"cifar10", "cifar100"})
    axes = fig.subplots(1, len(datasets), squeeze=False)[0]
    for ax, dataset in zip(axes, datasets, strict=True):
        points = data[dataset]
        methods = list(dict.fromkeys(method for method, _ in points))
        backbones = list(dict.fromkeys(backbone for _, backbone in points))
        width = 0.8 / max(len(backbones), 1)
        positions = np.arange(len(methods))
        for i, backbone in enumerate(backbones):
            cells = [points.get((method, backbone)) for method in methods]
            ax.bar(
                positions + (i - (len(backbones) - 1) / 2) * width,
                [c.mean if c else 0.0 for c in cells],
                width,
                yerr=[c.std if c else 0.0 for c in cells],
                capsize=3,
                label=backbone,
            )
        ax.set_xticks(positions, methods, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("linear evaluation top-1 (%)")
        ax.set_title(friendly(dataset) + _data_note(plan), fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{' versus '.join(_backbone_names(data))} (mean ± std over seeds){_scale_note(plan)}", fontsize=10)
    return _save(fig, path)


def _backbone_names(data: dict[Any, dict[Any, Cell]]) -> list[str]:
    return list(dict.fromkeys(backbone for points in data.values() for _, backbone in points))


def _figure(kind: str):  # type: ignore[no-untyped-def]
    """A matplotlib figure (Agg canvas, no display, no torch import) of a fixed pixel size."""
    from matplotlib.figure import Figure

    width, height = FIGURE_SIZE_IN[kind]
    return Figure(figsize=(width, height), dpi=FIGURE_DPI, layout="constrained")


def _save(fig: Any, path: Path) -> Path:
    """Save at FIGURE_DPI without a tight bounding box: the PNG is exactly figsize x dpi pixels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=FIGURE_DPI, format="png")
    return path


FIGURES: dict[str, Callable[[Plan, Path], Path | None]] = {
    "k": figure_k,
    "labels": figure_labels,
    "backbones": figure_backbones,
}


def write_report(plan: Plan) -> Path:
    """``<runs>/report-<NAME>/``: report.md (every table and figure), <table>.md, report.json, the PNGs."""
    folder = plan.report_dir
    folder.mkdir(parents=True, exist_ok=True)
    built = build_tables(plan)
    words = [status(run).word for run in plan.runs]
    counts = {word: words.count(word) for word in ("done", "partial", "todo", "conflict") if word in words}
    progress = ", ".join(f"{n} {word}" for word, n in counts.items())
    lines = [
        f"# Reproduction: {plan.name} (scale {plan.scale.name})",
        "",
        f"Scale: {plan.scale.summary}.",
        f"Runs: {len(plan.runs)} ({progress}); folder `{plan.runs_dir}`; shards `{plan.shards_root}`.",
        "Cells: top-1 %, mean±std (population) over seeds; '-': no result yet.",
        "",
    ]
    figures: dict[str, str] = {}
    for spec in plan.tables:
        table = built[spec.name]
        markdown = to_markdown(table)
        write_text_atomic(folder / f"{spec.name}.md", f"# {spec.title}\n\n{markdown}")
        lines += [f"## {spec.title}", "", markdown.rstrip("\n")]
        if spec.note and not plan.scale.backbones:  # notes speak of the paper's backbones
            lines += ["", spec.note]
        if spec.name in FIGURES:
            target = folder / FIGURE_FILES[spec.name]
            made = FIGURES[spec.name](plan, target)
            if made is not None:
                figures[spec.name] = made.name
                lines += ["", f"![{spec.title}]({made.name})"]
            else:
                target.unlink(missing_ok=True)
                lines += ["", "(figure: no results yet)"]
        lines.append("")
    write_text_atomic(folder / "report.md", "\n".join(lines))
    summary = {
        "name": plan.name,
        "scale": plan.scale.name,
        "runs": counts,
        "tables": {name: table.as_dict() for name, table in built.items()},
        "figures": figures,
    }
    write_text_atomic(folder / "report.json", json.dumps(summary, indent=2) + "\n")
    return folder
