"""The headline table of docs/benchmarks.md and the README, regenerated from the recorded results.

Every `ssrr bench ...` run records its raw result (with its command and machine) as a marked block in
docs/benchmarks.md. `ssrr bench summary` reads those blocks and rewrites one table (ours, the baseline of the
same run, the ratio, the machine) between `<!-- bench-summary -->` markers in docs/benchmarks.md and in the
README, so the README's numbers always come from the recorded runs (`just bench` runs every benchmark, then this).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BLOCK = re.compile(
    r"<!-- bench:(?P<name>[^ ]+) -->.*?Command: `(?P<command>[^`]*)`.*?"
    r"When: (?P<when>[^;]*); machine: (?P<machine>\{.*?\})"
    r".*?```json\n(?P<json>.*?)\n```",
    re.S,
)
START, END = "<!-- bench-summary -->", "<!-- /bench-summary -->"


@dataclass
class Recorded:
    """One recorded benchmark block."""

    name: str
    command: str
    when: str
    machine: dict[str, Any]
    result: dict[str, Any]


def read_blocks(path: Path) -> list[Recorded]:
    """Every recorded block of a benchmarks file, in file order."""
    return [
        Recorded(m["name"], m["command"], m["when"], json.loads(m["machine"]), json.loads(m["json"]))
        for m in BLOCK.finditer(path.read_text())
    ]


def _n(value: float | None, unit: str = "", digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}{unit}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"**{value:.1f}x**"


def _pipeline(r: dict[str, Any]) -> tuple[str, str, str]:
    others = ", ".join(f"{name} {_n(v, ' views/s')}" for name, v in (r.get("baselines") or {}).items())
    return _n(r["views_per_s"], " views/s"), others or _n(r.get("baseline_views_per_s"), " views/s"), _ratio(r["ratio"])


def _e2e(r: dict[str, Any]) -> tuple[str, str, str]:
    best = (r.get("baseline_settings") or {}).get("best")
    limit = r.get("step_limit") or {}
    ours = f"{_n(r['views_per_s'], ' views/s')}, data wait {r['data_wait']:.1%}"
    if limit.get("fraction_of_peak"):
        ours += f", {limit['fraction_of_peak']:.0%} of the GEMM peak"
    base = _n(r.get("baseline_views_per_s"), " views/s")
    if best:
        tried = len(r["baseline_settings"]["tried"])
        base += f" (best of {tried} settings: {best['workers']} workers, {best['threads']} threads)"
    if r.get("baseline_suspect"):
        base += " SUSPECT: its parts predict otherwise"
    plan = r.get("thread_plan")
    if plan:
        ours += f", torch {plan['torch_threads']} + DALI {plan['dali_threads']} threads"
    if r.get("compile"):
        ours += ", compiled"
    if r.get("authors_views_per_s"):
        checkout = (r.get("authors_settings") or {}).get("code") == "checkout"
        who = "the authors' own code" if checkout else "the authors' settings"
        base += f"; {who} {_n(r['authors_views_per_s'], ' views/s')} ({_ratio(r['ratio_to_authors'])})"
    return ours, base, _ratio(r.get("ratio"))


def _step(r: dict[str, Any]) -> tuple[str, str, str]:
    return _n(r["step_s"], " s", 3), _n(r.get("baseline_step_s"), " s", 3), _ratio(r.get("step_speedup"))


def _accuracy(r: dict[str, Any]) -> tuple[str, str, str]:
    def side(prefix: str) -> str:
        time_key = f"{prefix}time_to_target_s"
        timed = f"{_n(r.get(time_key), ' s')} to {r['target_top1']}%, " if r.get("target_top1") is not None else ""
        wall = r.get(f"{prefix}wall_s")
        return f"{timed}{r[f'{prefix}top1_mean']:.1f} +- {r[f'{prefix}top1_std']:.1f}% after {_n(wall, ' s')}"

    ratio = r.get("time_to_target_ratio") or r.get("speedup")
    return side(""), side("baseline_"), _ratio(ratio)


def _linear(r: dict[str, Any]) -> tuple[str, str, str]:
    if r.get("baseline_extrapolated") is not None:  # records of the earlier, recompute-every-epoch baseline
        extrapolated = " recomputing features every epoch" + (" (extrapolated)" if r["baseline_extrapolated"] else "")
        return _n(r["wall_s"], " s", 1), _n(r["baseline_wall_s"], " s", 1) + extrapolated, _ratio(r.get("speedup"))
    speedup = r.get("speedup")
    slower = " (ours does not beat it)" if speedup is not None and speedup < 1 else ""
    ours = f"{_n(r['wall_s'], ' s', 1)}, {r['top1']:.1f}%"
    baseline = f"{_n(r['baseline_wall_s'], ' s', 1)}, {r['baseline_top1']:.1f}% (cached once, torch.optim.Adam)"
    return ours, baseline, _ratio(speedup) + slower


ROWS: dict[str, tuple[str, Callable[[dict[str, Any]], tuple[str, str, str]]]] = {
    "pipeline": ("DALI pipeline vs torchvision (PIL, transforms.v2) in DataLoader workers", _pipeline),
    "e2e": ("end to end, pipeline + training step", _e2e),
    "step": ("training step, model only", _step),
    "accuracy": ("time to an accuracy, seeds mean +- std", _accuracy),
    "linear": ("linear evaluation, ours vs plain torch", _linear),
}


def _machine(info: dict[str, Any]) -> str:
    flags = ",".join(info.get("cpu_flags") or []) or "flags not recorded"
    text = f"{info.get('cpu', '?')} [{flags}] x{info.get('cores', '?')}"
    return text + (f", {info['gpu']}" if info.get("gpu") else "")


def summary_markdown(blocks: list[Recorded], history: bool = True) -> str:
    """The headline table: one row per recorded benchmark with a known kind, the rows of the newest record's
    machine first, in recorded order, then the others labelled history (`history=False`: none of them)."""
    lines = [
        "| benchmark | ours | baseline (same run) | ratio | machine | command |",
        "|---|---|---|---|---|---|",
    ]
    newest = max((block.when for block in blocks), default="")
    current = next((block.machine for block in blocks if block.when == newest), {})
    for block in sorted(blocks, key=lambda b: b.machine != current):  # stable: recorded order within each
        kind = block.name.split("-", 1)[0]
        if kind not in ROWS:
            continue
        label, cells = ROWS[kind]
        try:
            ours, base, ratio = cells(block.result)
        except KeyError:  # recorded by an older version of the benchmark: left to the raw block
            continue
        if block.machine != current and not history:
            continue
        old = "" if block.machine == current else " (history: another machine)"
        lines.append(
            f"| {label}{old} (`{block.name}`, {block.when}) | {ours} | {base} | {ratio} "
            f"| {_machine(block.machine)} | `{block.command}` |"
        )
    return "\n".join(lines) + "\n"


def replace_between_markers(path: Path, body: str) -> bool:
    """Rewrite the text between the summary markers of `path`; False when it has none."""
    text = path.read_text()
    if START not in text or END not in text:
        return False
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(f"{head}{START}\n{body}{END}{tail}")
    tmp.replace(path)
    return True


def write_summary(benchmarks: Path, targets: list[Path]) -> list[Path]:
    """Regenerate the summary table from `benchmarks` into every target that has the markers: all rows in the
    benchmarks file itself (older machines labelled history), the newest machine's rows elsewhere (the README)."""
    blocks = read_blocks(benchmarks)
    written = []
    for path in targets:
        body = summary_markdown(blocks, history=path.resolve() == benchmarks.resolve())
        if path.is_file() and replace_between_markers(path, body):
            written.append(path)
    return written
