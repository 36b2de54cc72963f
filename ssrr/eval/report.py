"""`ssrr report`: evaluation results gathered into the layout of the paper's first table.

Rows are methods (read from each run's `config.json`; `random:<backbone>` sources are "Random Weights"),
one row per (method, backbone); columns are protocols on datasets, with friendly names for the paper's
(Linear CIFAR-100, Linear tiny-ImageNet, Domain 10->100, Domain 100->10, Grain CIFAR-100-20, Finetune STL-10)
and `<protocol> <dataset>` for anything else found. A cell is the mean and the population standard deviation
(numpy's default, ddof=0) of all the results that fall in it, i.e. over seeds (of pretraining, of
evaluation, or both).

A linear result is a "Domain A->B" column when the backbone was pretrained on another dataset than the
evaluation's. A random backbone was pretrained on nothing, so its linear results fill both the "Linear X"
column and the domain column that ends in X (the paper's table reports it so: 10->100 equals CIFAR-100).
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssrr.config import CONFIG_FILE, RunConfig
from ssrr.errors import SsrrError

STANDARD_COLUMNS = (
    "Linear CIFAR-100",
    "Linear tiny-ImageNet",
    "Domain 10->100",
    "Domain 100->10",
    "Grain CIFAR-100-20",
    "Finetune STL-10",
)
METHOD_ROWS = {
    "supervised": "Supervised",
    "random": "Random Weights",
    "deepcluster": "DeepCluster",
    "rotation": "RotationNet",
    "infomax": "Deep InfoMax",
    "simclr": "SimCLR",
    "relational": "Relational Reasoning",
}
DATASET_NAMES = {
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "stl10": "STL-10",
    "tiny-imagenet": "tiny-ImageNet",
    "slimagenet": "SlimageNet",
}
DOMAIN_NAMES = {("cifar10", "cifar100"): "Domain 10->100", ("cifar100", "cifar10"): "Domain 100->10"}
_COLUMN_KIND_ORDER = ("Linear", "Domain", "Grain", "Finetune", "Semi", "k-NN", "Retrieval")


def canonical(dataset: str | None) -> str | None:
    """A dataset's family name: `shards/cifar10-jpeg` -> cifar10, `tiny_imagenet` -> tiny-imagenet."""
    if not dataset:
        return None
    name = Path(str(dataset)).name.lower()
    flat = re.sub(r"[^a-z0-9]", "", name)
    for prefix, family in (
        ("cifar100", "cifar100"),
        ("cifar10", "cifar10"),
        ("stl10", "stl10"),
        ("tinyimagenet", "tiny-imagenet"),
        ("tinyimgnet", "tiny-imagenet"),
        ("slimagenet", "slimagenet"),
    ):
        if flat.startswith(prefix):
            return family
    return name


def friendly(dataset: str | None) -> str:
    family = canonical(dataset) or "?"
    return DATASET_NAMES.get(family, family)


def columns_of(result: dict[str, Any], trained_on: str | None) -> list[tuple[str, float]]:
    """The (column, value) cells that one result contributes (none for results without a metric)."""
    protocol = str(result.get("protocol", "?"))
    dataset = canonical(result.get("dataset"))
    name = friendly(dataset)
    if result.get("default_split") is False:  # scored on another split than the dataset's held-out one
        name = f"{name} [{result.get('split')}]"
    pre = canonical(trained_on)
    coarse = result.get("labels") == "coarse"
    random = str(result.get("source", "")).startswith("random:") or result.get("method") == "random"
    top1 = result.get("top1")
    if protocol == "linear" and isinstance(top1, (int, float)):
        if coarse:
            grain = f"Grain {name}-20" if dataset == "cifar100" else f"Grain {name} (coarse)"
            return [(grain if not pre or pre == dataset else f"{grain} from {friendly(pre)}", top1)]
        if pre and dataset and pre != dataset:
            return [(DOMAIN_NAMES.get((pre, dataset), f"Domain {friendly(pre)}->{name}"), top1)]
        cells = [(f"Linear {name}", top1)]
        if random:
            cells += [(column, top1) for (src, dst), column in DOMAIN_NAMES.items() if dst == dataset]
        return cells
    suffix = " (coarse)" if coarse else ""
    if protocol in ("semi", "semi-finetune") and isinstance(result.get("fractions"), dict):
        kind = "Semi" if protocol == "semi" else "Semi-FT"
        return [(f"{kind} {100 * float(f):g}% {name}{suffix}", v) for f, v in result["fractions"].items()]
    if protocol == "retrieval" and isinstance(result.get("map"), (int, float)):
        return [(f"Retrieval mAP {name}{suffix}", result["map"])]
    if not isinstance(top1, (int, float)):
        return []
    label = {"finetune": "Finetune", "knn": "k-NN"}.get(protocol, protocol)
    return [(f"{label} {name}{suffix}", top1)]


@dataclass
class Cell:
    values: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.pstdev(self.values) if len(self.values) > 1 else 0.0

    def text(self) -> str:
        if len(self.values) == 1:
            return f"{self.mean:.2f}"
        return f"{self.mean:.2f}±{self.std:.2f}"


@dataclass
class Table:
    columns: list[str]
    rows: list[tuple[str, str]]  # (method label, backbone)
    cells: dict[tuple[str, str], dict[str, Cell]]
    sources: int  # result files read

    def as_dict(self) -> dict[str, Any]:
        return {
            "columns": self.columns,
            "results": self.sources,
            "rows": [
                {
                    "method": method,
                    "backbone": backbone,
                    "cells": {
                        column: {"mean": cell.mean, "std": cell.std, "n": len(cell.values), "values": cell.values}
                        for column, cell in self.cells[(method, backbone)].items()
                    },
                }
                for method, backbone in self.rows
            ],
        }

    def text(self, row: tuple[str, str], column: str) -> str:
        cell = self.cells[row].get(column)
        return cell.text() if cell else "-"


def _run_config(json_path: Path) -> RunConfig | None:
    """The config of the run a result belongs to (`<run>/eval/x.json` -> `<run>/config.json`)."""
    for folder in (json_path.parent.parent, json_path.parent):
        if (folder / CONFIG_FILE).is_file():
            try:
                return RunConfig.load(folder)
            except SsrrError:
                return None
    return None


def method_label(method: str, head: str | None = None) -> str:
    label = METHOD_ROWS.get(method, method)
    if method == "relational" and head and head != "relation":
        label += f" (head: {head})"
    return label


def find_results(paths: Sequence[str | Path]) -> list[tuple[Path, dict[str, Any]]]:
    """Every evaluation result JSON in the given files or folders (searched recursively), each once."""
    found: dict[Path, dict[str, Any]] = {}
    for given in paths:
        path = Path(given)
        if not path.exists():
            raise SsrrError(f"{path}: no such run, folder or result file")
        candidates = [path] if path.is_file() else sorted(path.rglob("*.json"))
        for candidate in candidates:
            try:
                data = json.loads(candidate.read_text())
            except (ValueError, OSError):
                continue
            if isinstance(data, dict) and "protocol" in data and "source" in data:
                found[candidate.resolve()] = data
    return list(found.items())


def build_table(results: list[tuple[Path, dict[str, Any]]]) -> Table:
    """Group results by (method, backbone) and column; every standard column is present."""
    cells: dict[tuple[str, str], dict[str, Cell]] = {}
    for path, result in results:
        config = _run_config(path)
        source = str(result.get("source", ""))
        if source.startswith("random:"):
            method, head, backbone, trained_on = "random", None, source.split(":", 1)[1], None
        elif config is not None:
            method, head, backbone, trained_on = config.method, config.head, config.backbone, config.dataset
        else:
            method, head = str(result.get("method") or "unknown"), None
            backbone, trained_on = str(result.get("backbone", "?")), result.get("trained_on")
        row = (method_label(method, head), backbone)
        for column, value in columns_of(result, trained_on):
            cells.setdefault(row, {}).setdefault(column, Cell()).values.append(float(value))
    order = list(METHOD_ROWS.values())
    rows = sorted(cells, key=lambda r: (order.index(r[0]) if r[0] in order else len(order), r[0], r[1]))
    extra = {c for row in cells.values() for c in row} - set(STANDARD_COLUMNS)

    def column_key(column: str) -> tuple[int, str]:
        kind = column.split(" ", 1)[0]
        return (_COLUMN_KIND_ORDER.index(kind) if kind in _COLUMN_KIND_ORDER else len(_COLUMN_KIND_ORDER), column)

    columns = list(STANDARD_COLUMNS) + sorted(extra, key=column_key)
    return Table(columns, rows, cells, len(results))


def to_markdown(table: Table) -> str:
    """The table as GitHub markdown: Method | Backbone | one column per protocol."""
    header = ["Method", "Backbone", *table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.rows:
        lines.append("| " + " | ".join([row[0], row[1], *(table.text(row, c) for c in table.columns)]) + " |")
    lines += ["", f"Mean±std (population) over seeds; {table.sources} result files; '-': not evaluated."]
    return "\n".join(lines) + "\n"


def filled_columns(table: Table) -> list[str]:
    """The columns that hold at least one result."""
    return [c for c in table.columns if any(c in table.cells[row] for row in table.rows)]


def to_rich(table: Table, all_columns: bool = False):  # type: ignore[no-untyped-def]
    """The table for the terminal: the columns with results (all of the paper's too with `all_columns`)."""
    from rich.table import Table as RichTable

    columns = table.columns if all_columns else filled_columns(table)
    out = RichTable(title="Evaluation results (top-1 %, mean±std over seeds)", show_lines=False)
    out.add_column("Method", style="bold", no_wrap=True)
    out.add_column("Backbone", no_wrap=True)
    for column in columns:
        out.add_column(column, justify="right", min_width=7)
    for row in table.rows:
        style = "bold green" if row[0].startswith("Relational Reasoning") else None
        out.add_row(row[0], row[1], *(table.text(row, c) for c in columns), style=style)
    empty = [c for c in STANDARD_COLUMNS if c not in columns]
    if empty:
        out.caption = "not evaluated: " + ", ".join(empty)
    return out
