"""Checkpoints: safetensors weights plus optimizer/RNG/progress state, written atomically, last N kept.

Layout of a run folder::

    runs/NAME/config.json                 the resolved RunConfig
    runs/NAME/checkpoints/step-00000390/ model.safetensors (method: backbone + heads)
                                          state.json + state.safetensors (optimizer, scheduler,
                                          RNG, epoch, step: no pickle, see `ssrr.train.safe_state`)
                                          every rank's RNG (python, numpy, torch, CUDA) as `rng-rank<r>`
                                          (`rng`: rank 0's); the pipelines' random streams need no entry:
                                          they derive from (seed, epoch, rank) and a mid-epoch resume
                                          replays the epoch's batches up to where it stopped
    runs/NAME/backbone.safetensors        the latest backbone alone, loadable by plain torch code:
                                          build_backbone(meta["backbone"]).load_state_dict(load_file(path))

`load_backbone` accepts a run folder, a checkpoint folder, a `backbone.safetensors` file, or
`random:<backbone>` (an untrained backbone: the lower bound; `random:tv:resnet18@cifar` with the CIFAR stem).
The metadata holds the backbone's name and, for a tv:/timm: backbone built with `--stem cifar`, `stem`.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ssrr.config import RunConfig
from ssrr.errors import SsrrError
from ssrr.files import remove_stale, replace_dir, save_safetensors, writer_tag
from ssrr.models.backbones import build_backbone
from ssrr.train.safe_state import JSON_FILE, load_state, save_state

CHECKPOINTS = "checkpoints"
MODEL_FILE = "model.safetensors"
STATE_FILE = JSON_FILE
LEGACY_STATE_FILE = "state.pt"  # earlier ssrr versions pickled the training state: refused, never unpickled
BACKBONE_FILE = "backbone.safetensors"
_CHECKPOINT_DIR = re.compile(r"step-(\d{8,})$")


def _state_dict_for_save(module: nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or non-contiguous storage: store plain contiguous copies.
    return {key: value.detach().contiguous().cpu() for key, value in module.state_dict().items()}


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def rng_key(rank: int) -> str:
    """The training state's entry holding rank `rank`'s random state (`rng` stays rank 0's, as before)."""
    return f"rng-rank{rank}"


def rng_entries(states: list[dict[str, Any]]) -> dict[str, Any]:
    """The training-state entries of every rank's random state (`states` in rank order)."""
    return {"rng": states[0], **{rng_key(rank): state for rank, state in enumerate(states)}}


def rng_of_rank(state: dict[str, Any], rank: int) -> dict[str, Any]:
    """Rank `rank`'s saved random state; a checkpoint of a run with fewer ranks (or of an older ssrr, which kept
    rank 0's only) gives rank 0's, so that run resumes, though no longer as the uninterrupted run."""
    saved = state.get(rng_key(rank))
    return saved if isinstance(saved, dict) else state["rng"]


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    run_dir: Path,
    method: nn.Module,
    backbone_name: str,
    training_state: dict[str, Any],
    step: int,
    keep: int,
) -> Path:
    """Write checkpoints/step-NNNNNNNN atomically (temp folder, then rename) and prune to the last `keep`.

    Work folders of a killed earlier save (`.step-<host>-<pid>-NNNNNNNN-...`) are removed first.
    """
    root = run_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    remove_stale(root, ".step-")
    staging = Path(tempfile.mkdtemp(prefix=f".step-{writer_tag()}-{step:08d}-", dir=root))
    backbone = getattr(method, "backbone", method)
    metadata = {"backbone": backbone_name, "step": str(step)}
    stem = getattr(backbone, "stem_kind", "default")
    if stem != "default":  # tv:/timm: backbones built with --stem cifar: loading rebuilds the same model
        metadata["stem"] = stem
    try:
        save_safetensors(_state_dict_for_save(method), staging / MODEL_FILE, metadata)
        save_state(staging, training_state)
        replace_dir(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    save_safetensors(_state_dict_for_save(backbone), run_dir / BACKBONE_FILE, metadata)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if _CHECKPOINT_DIR.match(p.name) and ((p / STATE_FILE).is_file() or (p / LEGACY_STATE_FILE).is_file())
    ]
    return sorted(found, key=lambda p: int(_CHECKPOINT_DIR.match(p.name).group(1)))  # type: ignore[union-attr]


def load_method_weights(method: nn.Module, checkpoint: Path) -> None:
    """Load a checkpoint's weights into `method`; a checkpoint of another model is a clear SsrrError."""
    tensors = _read_safetensors(checkpoint / MODEL_FILE)
    missing, unexpected = _compare_keys(method.state_dict(), tensors)
    if missing or unexpected:
        raise SsrrError(f"{checkpoint}: checkpoint of another model ({_describe(missing, unexpected)})")
    method.load_state_dict(tensors)


def load_training_state(checkpoint: Path) -> dict[str, Any]:
    """The optimizer/scheduler/RNG/progress state of a checkpoint, read without pickle.

    A checkpoint of an older ssrr (a pickled `state.pt`) is refused, not unpickled: a pickle can run code.
    """
    if not (checkpoint / STATE_FILE).is_file() and (checkpoint / LEGACY_STATE_FILE).is_file():
        raise SsrrError(
            f"{checkpoint / LEGACY_STATE_FILE}: a pickled training state (older ssrr) is never loaded, since "
            "a pickle can run code; its weights still evaluate (ssrr eval), or start a new run with another --name"
        )
    return load_state(checkpoint)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise SsrrError(f"{path}: missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise SsrrError(f"{path}: not a readable safetensors file ({exc})") from exc


def _compare_keys(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    missing = [k for k in expected if k not in got or tuple(got[k].shape) != tuple(expected[k].shape)]
    unexpected = [k for k in got if k not in expected]
    return missing, unexpected


def _describe(missing: list[str], unexpected: list[str]) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensors missing or of another shape, e.g. {missing[0]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]}")
    return "; ".join(parts)


@dataclass
class LoadedBackbone:
    module: nn.Module
    name: str  # registry name, e.g. "conv4"
    source: str  # where it came from ("random:conv4" for an untrained one)
    trained_on: str | None  # the pretraining dataset, when known
    image_size: tuple[int, int] | None  # the pretraining image size, when known


def load_backbone(spec: str | Path, backbone: str | None = None) -> LoadedBackbone:
    """A backbone from a run folder, a checkpoint folder, a .safetensors file, or `random:<name>`.

    `backbone`, when given, must match the stored one: loading weights of another model is refused.
    """
    text = str(spec)
    if text.startswith("random:"):
        name, _, stem = text.split(":", 1)[1].partition("@")  # random:tv:resnet18@cifar: the CIFAR stem
        if backbone and backbone != name:
            raise SsrrError(f"{text}: asked for backbone {backbone}")
        return LoadedBackbone(build_backbone(name, stem or "default"), name, text, None, None)
    path = Path(text)
    if not path.exists():
        raise SsrrError(f"{path}: no such run, checkpoint or weights file (or use random:<backbone>)")
    trained_on: str | None = None
    image_size: tuple[int, int] | None = None
    if path.is_dir() and (path / BACKBONE_FILE).is_file():  # a run folder
        config = RunConfig.load(path)
        trained_on = config.dataset
        image_size = _image_size_of(path)
        weights = path / BACKBONE_FILE
    elif path.is_dir() and (path / MODEL_FILE).is_file():  # a checkpoint folder
        weights = path / MODEL_FILE
        run_dir = path.parent.parent
        if (run_dir / "config.json").is_file():
            trained_on = RunConfig.load(run_dir).dataset
            image_size = _image_size_of(run_dir)
    elif path.is_file():
        weights = path
    else:
        raise SsrrError(f"{path}: holds no {BACKBONE_FILE} or {MODEL_FILE}")
    tensors = _read_safetensors(weights)
    metadata = _metadata(weights)
    stored = metadata.get("backbone")
    if stored is None:
        raise SsrrError(f"{weights}: no backbone name in its metadata; not an ssrr checkpoint")
    if backbone and backbone != stored:
        raise SsrrError(f"{weights}: a {stored} checkpoint, not {backbone}")
    if weights.name == MODEL_FILE:  # full method weights: keep the backbone's
        tensors = {k.removeprefix("backbone."): v for k, v in tensors.items() if k.startswith("backbone.")}
    module = build_backbone(stored, metadata.get("stem", "default"))
    missing, unexpected = _compare_keys(module.state_dict(), tensors)
    if missing or unexpected:
        raise SsrrError(f"{weights}: weights do not fit a {stored} backbone ({_describe(missing, unexpected)})")
    module.load_state_dict(tensors)
    return LoadedBackbone(module, stored, str(path), trained_on, image_size)


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def _image_size_of(run_dir: Path) -> tuple[int, int] | None:
    env = run_dir / "environment.json"
    if not env.is_file():
        return None
    try:
        size = json.loads(env.read_text()).get("image_size")
        return (int(size[0]), int(size[1])) if size else None
    except (OSError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise SsrrError(f"{env}: malformed environment record ({exc})") from None
