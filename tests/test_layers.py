"""Dependencies point one way, from the command line down to the data: a module never imports from a layer above
its own, and no two subpackages import each other. The layer order is written once, here (and drawn in
docs/architecture.md); every import counts, also those inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Bottom to top. A unit is a top-level module or subpackage of ssrr (`ssrr/<unit>`), or `pipelines`, or `cli`.
LAYERS: list[set[str]] = [
    {"errors"},  # SsrrError: the one-line user error
    {"files", "options", "hardware", "devices", "schedules", "launch", "ranks"},  # ... launchers, ranks
    {"declare", "threads"},  # options declared on dataclass fields; thread plans (grid, choice, cache)
    {"data"},  # sources, shard writer, manifests, remote shards
    {"pipelines"},  # DALI pipelines (never the trainer or the models)
    {"precision"},  # how a module runs on a batch: device, autocast, memory format
    {
        "models",
        "losses",
        "cluster",
        "config",
        "augment",
        "environment",
    },  # backbones, heads, pure losses, k-means, config, torch augmentations
    {"relational", "presets"},  # the pair stage of relational reasoning; presets, replacing config fields
    {"methods"},  # the registry of pretraining methods, each with its own options
    {"run_options"},  # the run's options from their declarations: config <-> command line, preset, resume
    {"train"},  # the loop, checkpoints, the live display
    {"eval"},  # protocols on trained backbones; the probes handed to the loop
    {"official", "bench", "demo", "experiments", "export"},  # whole jobs built from the layers below
    {"cli"},  # the command line, a thin face over the library
    {"__main__"},  # `python -m ssrr`
]
LAYER_OF = {unit: level for level, units in enumerate(LAYERS) for unit in units}


def unit_of(path: Path) -> str:
    relative = path.relative_to(REPO)
    if relative.parts[0] in ("pipelines", "cli"):
        return relative.parts[0]
    return relative.parts[1].removesuffix(".py")


def imported_units(path: Path) -> set[str]:
    """The ssrr units a file imports (`ssrr.X...`, `ssrr.pipelines...`, `ssrr.cli...`), anywhere in it."""
    units = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names if node.module == "ssrr"]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "ssrr" and len(parts) > 1:
                units.add(parts[1])
    return units


def source_files() -> list[Path]:
    files = [*(REPO / "ssrr").rglob("*.py"), *(REPO / "pipelines").rglob("*.py"), *(REPO / "cli").rglob("*.py")]
    return sorted(f for f in files if f.name != "__init__.py" or f.parent.name != "ssrr")


def test_every_unit_has_a_layer() -> None:
    units = {unit_of(f) for f in source_files()}
    assert units <= set(LAYER_OF), f"units without a layer: {sorted(units - set(LAYER_OF))}"


def test_no_module_imports_from_a_layer_above_its_own() -> None:
    upward = []
    for path in source_files():
        unit = unit_of(path)
        for target in imported_units(path) - {unit}:
            if target not in LAYER_OF:
                continue
            if LAYER_OF[target] >= LAYER_OF[unit]:  # above, or beside in the same layer
                upward.append(f"{path.relative_to(REPO)} ({unit}, layer {LAYER_OF[unit]}) imports {target}")
    assert not upward, "\n".join(upward)


def test_no_two_subpackages_import_each_other() -> None:
    edges = {(unit_of(path), target) for path in source_files() for target in imported_units(path)}
    both_ways = sorted({tuple(sorted(e)) for e in edges if e[0] != e[1] and (e[1], e[0]) in edges})
    assert not both_ways, both_ways


MAX_FUNCTION_LINES = 80  # a function fits on a screen or two
MAX_FILE_LINES = 450  # option declarations included


def test_no_function_over_80_lines_and_no_file_over_450() -> None:
    too_long = []
    for path in sorted([*REPO.glob("ssrr/**/*.py"), *REPO.glob("pipelines/**/*.py"), *REPO.glob("cli/**/*.py")]):
        text = path.read_text()
        if len(text.splitlines()) > MAX_FILE_LINES:
            too_long.append(f"{path.relative_to(REPO)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(REPO)}: {node.name} has {lines} lines")
    assert not too_long, "\n".join(too_long)
