"""Every evaluation protocol in one registry, and the one context each of them starts and ends with.

A protocol is one file under `ssrr/eval/` that calls `register(Protocol(...))` once at import. `ssrr eval NAME`
(cli/evaluate.py builds one command per registered protocol: the shared options below plus the protocol's own
`options`), the pretraining probes (`Protocol.probe`) and `ssrr reproduce` (`protocol(name).run(...)`) look
protocols up here; nothing else lists them. The steps with a toy protocol are in docs/architecture.md.

`EvalContext.open` is the shared set-up (labels check, device and precision, manifest, the split scored and
checked before any work, class names, the image-size policy, the output folder) and `EvalContext.finish` the
shared ending (wall time, `<stem>.json` and `<stem>.md` written atomically). `EvalContext.stem` names the
files after what was evaluated (`source_tag`), so results of two backbones in one `--out` folder sit side by
side and rerunning one evaluation replaces its own files only.

The options every protocol takes (`run(loaded, shard_dir, *, labels, seed, device, precision, out, image_size,
split, ...)`), one name for each concept: `split` is the split scored (the queries of retrieval, the points of
t-SNE), `labels` fine or coarse, `out` the output folder.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ssrr.data.formats import Manifest, load_manifest
from ssrr.errors import SsrrError
from ssrr.eval.common import base_result, check_labels, output_dir, resolve_execution, result_stem, run_dir_of
from ssrr.eval.features import (
    check_labelled,
    class_names,
    fit_split,
    held_out_split,
    parse_image_size,
    split_tag,
)
from ssrr.options import backbone_tag
from ssrr.precision import Execution
from ssrr.train.checkpoint import BACKBONE_FILE, LoadedBackbone

Result = dict[str, Any]
ProbeFn = Callable[..., float]  # (backbone: nn.Module, shard_dir, execution, split: str | None, **settings)


@dataclass(frozen=True)
class Option:
    """One option of one protocol: the keyword its `run` takes, its type, default and help. `flags` are the
    command-line names (default `--<name with dashes>`); `hidden` are older names still accepted, not shown."""

    name: str
    type: type
    default: Any
    help: str
    flags: tuple[str, ...] = ()
    hidden: tuple[str, ...] = ()

    @property
    def cli_flags(self) -> tuple[str, ...]:
        return self.flags or (f"--{self.name.replace('_', '-')}",)


@dataclass(frozen=True)
class Protocol:
    """An evaluation protocol: `run(loaded, shard_dir, **shared, **options) -> result`, the options it adds to
    the shared ones, the result keys the CLI shows, how it reports progress, and (optionally) a probe the
    pretraining loop can call, `probe(backbone, shard_dir, execution, split) -> percent`."""

    name: str
    run: Callable[..., Result]
    help: str  # the command's help text (first line: the summary)
    options: tuple[Option, ...] = ()
    headline: tuple[str, ...] = ("top1", "top5")
    progress: str = "none"  # epochs: (epoch, epochs, loss) | lines: one str per step | status: a spinner | none
    split_help: str = ""  # what `--split` means for this protocol, when more than the split scored
    split_flags: tuple[str, ...] = ()  # older names of `--split` (hidden)
    probe: ProbeFn | None = None
    summary: str = field(init=False, default="")

    def __post_init__(self) -> None:
        object.__setattr__(self, "summary", self.help.strip().splitlines()[0])


_REGISTRY: dict[str, Protocol] = {}


def register(protocol: Protocol) -> Protocol:
    """Add a protocol (a second one of the same name is a bug, unless it is the same object re-imported)."""
    known = _REGISTRY.get(protocol.name)
    if known is not None and known.run is not protocol.run:
        raise ValueError(f"two evaluation protocols named {protocol.name!r}")
    _REGISTRY[protocol.name] = protocol
    return protocol


def unregister(name: str) -> None:
    """Remove a protocol (tests register toy ones)."""
    _REGISTRY.pop(name, None)


def _discover() -> None:
    """Import every module of `ssrr.eval`: each protocol file registers itself."""
    import ssrr.eval

    for module in pkgutil.iter_modules(ssrr.eval.__path__):
        importlib.import_module(f"ssrr.eval.{module.name}")


def protocols() -> list[Protocol]:
    """Every registered protocol, in registration order."""
    _discover()
    return list(_REGISTRY.values())


def protocol(name: str) -> Protocol:
    """The protocol called `name`, or one line naming the known ones."""
    _discover()
    if name not in _REGISTRY:
        raise SsrrError(f"unknown evaluation protocol {name!r} (known: {', '.join(_REGISTRY)})")
    return _REGISTRY[name]


def source_tag(loaded: LoadedBackbone) -> str:
    """What was evaluated, as a file-name part: the run's name (with the checkpoint's for a checkpoint of a run),
    `random-<backbone>` for random weights, or the weights file's name."""
    if loaded.source.startswith("random:"):
        text = f"random-{backbone_tag(loaded.source.removeprefix('random:'))}"
    else:
        path = Path(loaded.source)
        run = run_dir_of(loaded)
        if run is None:
            text = (path.parent.name if path.name == BACKBONE_FILE else path.stem) if path.is_file() else path.name
        elif path.is_dir() and path.resolve() != run.resolve():  # <run>/checkpoints/<checkpoint>
            text = f"{run.resolve().name}-{path.name}"
        else:
            text = run.resolve().name
    return re.sub(r"[^A-Za-z0-9._+=-]+", "_", text).strip("._") or "backbone"


@dataclass
class EvalContext:
    """What every protocol shares between its set-up and its result (see the module docstring)."""

    loaded: LoadedBackbone
    shard_dir: Path
    manifest: Manifest
    labels: str
    seed: int
    execution: Execution
    split: str  # the split scored (checked to exist and carry `labels` labels)
    fit: str | None  # the split fitted on (head, bank, gallery; checked likewise), None for a protocol that fits none
    image_size: str | tuple[int, int]
    out: str | Path | None
    started: float

    @classmethod
    def open(
        cls,
        loaded: LoadedBackbone,
        shard_dir: Path | str,
        *,
        labels: str = "fine",
        seed: int = 1,
        device: str | torch.device = "auto",
        precision: str = "fp32",
        split: str | None = None,
        image_size: str | tuple[int, int] = "auto",
        out: str | Path | None = None,
        fit: str | None = None,
        fits: bool = True,
    ) -> EvalContext:
        """Check everything a protocol needs before any work: labels, device, precision, the split scored, the
        split fitted on (`fit`, default `fit_split`'s; none when not `fits`), image size."""
        started = time.perf_counter()
        check_labels(labels)
        policy = parse_image_size(image_size) if isinstance(image_size, str) else image_size
        execution = resolve_execution(device, precision)
        manifest = load_manifest(shard_dir)
        scored = held_out_split(shard_dir, manifest, labels, split)
        fitted = (fit or fit_split(manifest, scored)) if fits else None
        if fitted is not None:
            check_labelled(shard_dir, manifest, labels, fitted)
        return cls(loaded, Path(shard_dir), manifest, labels, seed, execution, scored, fitted, policy, out, started)

    @property
    def train_split(self) -> str:
        """The split fitted on, for the protocols that fit one (opened with `fits`)."""
        if self.fit is None:
            raise AttributeError("this protocol was opened without a split to fit on (fits=False)")
        return self.fit

    @property
    def device(self) -> torch.device:
        return self.execution.device

    @property
    def names(self) -> list[str]:
        """The class names of `labels`."""
        return class_names(self.manifest, self.labels)

    @property
    def out_dir(self) -> Path:
        return output_dir(self.loaded, self.out)

    def stem(self, protocol: str) -> str:
        """`<protocol>-<dataset>[-coarse][-<split>]-<what was evaluated>-s<seed>` (see `result_stem`)."""
        tag = split_tag(self.manifest, self.split)
        return result_stem(protocol, self.manifest.name, self.labels, self.seed, tag, source_tag(self.loaded))

    def result(self, protocol: str, *, scored: bool = True) -> Result:
        """The fields every result carries (`scored`: the protocol scores `split`, recorded with the result)."""
        split = self.split if scored else None
        tag = split_tag(self.manifest, self.split)
        result = base_result(
            protocol, self.loaded, self.manifest.name, self.labels, self.seed, self.execution, split, tag
        )
        return {**result, "train_split": self.fit} if self.fit else result

    def wall(self) -> float:
        return round(time.perf_counter() - self.started, 3)

    def finish(self, stem: str, result: Result, files: list[Path] | None = None) -> Result:
        """The shared ending: the wall time, figures listed, `<stem>.json` and `.md` written in `out_dir`."""
        from ssrr.eval.common import write_result

        result = {**result, "files": [str(f) for f in files or []], "wall_s": self.wall()}
        return write_result(self.out_dir, stem, result)
