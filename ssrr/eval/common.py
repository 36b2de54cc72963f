"""What every evaluation protocol shares: devices, seeds, output folders, result files and figure saving.

Results layout::

    <run>/eval/<protocol>-<dataset>[-coarse]-<source>-s<seed>.json   the numbers (top1, top5, per_class, ...)
    <run>/eval/<protocol>-<dataset>[-coarse]-<source>-s<seed>.md     a short markdown summary of the same
    <run>/eval/<protocol>-<dataset>[-coarse]-<source>-s<seed>-*.png  its figures

`<source>` names what was evaluated: the run's name, or `random-<backbone>` (`ssrr.eval.protocols.source_tag`),
so results of several backbones in one `--out` folder do not overwrite each other.

For `random:<backbone>` sources the folder is `--out` (default `runs/random-<backbone>/eval/`).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssrr.config import CONFIG_FILE, RunConfig
from ssrr.devices import choose_device
from ssrr.errors import SsrrError
from ssrr.files import replacing, write_text_atomic
from ssrr.options import backbone_tag
from ssrr.precision import Execution, as_execution
from ssrr.precision import resolve as resolve_precision
from ssrr.train.checkpoint import BACKBONE_FILE, MODEL_FILE, LoadedBackbone

EVAL_DIR = "eval"
FIGURE_DPI = 100  # figures are saved at a fixed size: figsize (inches) x FIGURE_DPI pixels, no tight bbox
LABELS = ("fine", "coarse")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """The one device rule of every command (`ssrr.devices.choose_device`): `auto` is the GPU when it is usable,
    else the CPU (saying why a present GPU is unused); `cuda` without a usable GPU is a one-line error."""
    return choose_device(name)


def resolve_execution(device: str | torch.device = "auto", precision: str = "fp32") -> Execution:
    """The device (see `resolve_device`) and precision (`--precision`) every forward pass of a protocol uses."""
    return resolve_precision(precision, resolve_device(device))


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (a `random:` backbone is initialised after this)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check_labels(labels: str) -> str:
    if labels not in LABELS:
        raise SsrrError(f"--labels must be fine or coarse, got {labels!r}")
    return labels


def run_dir_of(loaded: LoadedBackbone) -> Path | None:
    """The run folder a backbone came from (a run folder, or one of its checkpoints), if any."""
    if loaded.source.startswith("random:"):
        return None
    path = Path(loaded.source)
    if path.is_dir() and (path / CONFIG_FILE).is_file():
        return path
    if path.is_dir() and (path / MODEL_FILE).is_file() and (path.parent.parent / CONFIG_FILE).is_file():
        return path.parent.parent
    if path.is_file() and path.name == BACKBONE_FILE and (path.parent / CONFIG_FILE).is_file():
        return path.parent
    return None


def method_of(loaded: LoadedBackbone) -> str:
    """The pretraining method (`random` for an untrained backbone, `unknown` for a bare weights file)."""
    if loaded.source.startswith("random:"):
        return "random"
    run = run_dir_of(loaded)
    return RunConfig.load(run).method if run is not None else "unknown"


def output_dir(loaded: LoadedBackbone, out: str | Path | None) -> Path:
    """Where results go: `--out` when given; else `<run>/eval/`, `runs/random-<backbone>/eval/` for
    `random:` sources, or `eval/` beside a bare weights file."""
    if out:
        return Path(out)
    if loaded.source.startswith("random:"):
        return Path("runs") / f"random-{backbone_tag(loaded.source.removeprefix('random:'))}" / EVAL_DIR
    run = run_dir_of(loaded)
    path = Path(loaded.source)
    folder = run / EVAL_DIR if run is not None else (path if path.is_dir() else path.parent) / EVAL_DIR
    if folder.is_symlink():  # planted in a downloaded run: results must not land wherever it points
        raise SsrrError(f"{folder}: a symbolic link; refusing to write results through it (or give --out)")
    return folder


def result_stem(protocol: str, dataset: str, labels: str, seed: int, split: str = "", source: str = "") -> str:
    """`<protocol>-<dataset>[-coarse][-<split>][-<source>]-s<seed>`: the file name of a result, without extension.
    `split` is empty for the dataset's default held-out split (`ssrr.eval.features.split_tag`); `source` names
    what was evaluated (`ssrr.eval.protocols.source_tag`: the run, or `random-<backbone>`)."""
    suffix = (
        ("-coarse" if labels == "coarse" else "") + (f"-{split}" if split else "") + (f"-{source}" if source else "")
    )
    return f"{protocol}-{dataset}{suffix}-s{seed}"


def base_result(
    protocol: str,
    loaded: LoadedBackbone,
    dataset: str,
    labels: str,
    seed: int,
    device: torch.device | Execution,
    split: str | None = None,
    tag: str = "",
) -> dict[str, Any]:
    """The fields every result JSON carries (`split`: the split scored, where the protocol scores one; `tag`
    non-empty when it is not the dataset's default held-out split, recorded as `default_split: false`)."""
    execution = as_execution(device)
    return {
        "protocol": protocol,
        "dataset": dataset,
        **({"split": split, "default_split": not tag} if split else {}),
        "labels": labels,
        "backbone": loaded.name,
        "source": loaded.source,
        "method": method_of(loaded),
        "trained_on": Path(loaded.trained_on).name if loaded.trained_on else None,
        "seed": seed,
        "device": str(execution.device),
        "precision": execution.precision,
    }


def _atomic_write(path: Path, text: str) -> None:
    write_text_atomic(path, text)


def write_result(out_dir: Path, stem: str, result: dict[str, Any]) -> dict[str, Any]:
    """Write `<stem>.json` and `<stem>.md` (atomically) and return the result with both files listed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    result = dict(result)
    result["files"] = [*result.get("files", []), str(json_path), str(md_path)]
    _atomic_write(json_path, json.dumps(result, indent=2) + "\n")
    _atomic_write(md_path, markdown_summary(result))
    return result


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def markdown_summary(result: dict[str, Any]) -> str:
    """A short human summary of one result: the headline numbers, the settings, the files."""
    title = f"{result['protocol']} evaluation: {result['source']} on {result['dataset']} ({result['labels']} labels)"
    lines = [f"# {title}", ""]
    headline = [k for k in ("top1", "top5", "map", "knn_top1") if isinstance(result.get(k), (int, float))]
    if headline:
        lines += ["| " + " | ".join(headline) + " |", "|" + "---|" * len(headline)]
        lines += ["| " + " | ".join(_fmt(result[k]) for k in headline) + " |", ""]
    for key in ("precision_at", "fractions"):
        if isinstance(result.get(key), dict):
            lines += [f"| {key} | value |", "|---|---|"]
            lines += [f"| {k} | {_fmt(v)} |" for k, v in result[key].items()] + [""]
    skip = {"per_class", "files", "precision_at", "fractions", "history", "map_per_class", "confusion"}
    lines += ["Settings:", ""]
    lines += [f"- {k}: {_fmt(v)}" for k, v in result.items() if k not in skip and not isinstance(v, (dict, list))]
    if isinstance(result.get("per_class"), dict):
        worst = sorted(result["per_class"].items(), key=lambda kv: kv[1])[:5]
        lines += ["", "Hardest classes: " + ", ".join(f"{name} {acc:.1f}%" for name, acc in worst)]
    lines += ["", "Files:", ""] + [f"- {Path(f).name}" for f in result.get("files", [])]
    return "\n".join(lines) + "\n"


def new_figure(width_in: float, height_in: float):  # type: ignore[no-untyped-def]
    """A matplotlib figure on the Agg backend (no display needed), of a fixed pixel size."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), dpi=FIGURE_DPI, layout="constrained")


def save_figure(fig: Any, path: Path) -> Path:
    """Save at FIGURE_DPI without a tight bounding box, so the PNG is exactly figsize x dpi pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:  # whole or not at all
        fig.savefig(tmp, dpi=FIGURE_DPI, format="png")
    return path


def dump_json(result: dict[str, Any]) -> str:
    """One JSON object on one line (what `--json` prints on stdout)."""
    return json.dumps(result, separators=(",", ":"))
