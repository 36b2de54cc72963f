"""Import the authors' released checkpoints into an ssrr run folder (`ssrr import official`).

The authors' public implementation saves a run with `torch.save` of one dict, ``{"backbone": state_dict,
"relation": state_dict, "optimizer": Adam state_dict}`` (files named like
``relationnet_cifar10_resnet56_seed_1_epoch_500.tar``; a torch zip/pickle file despite the suffix). Such a file
is a pickle, so it is read only with ``torch.load(..., weights_only=True)``: tensors and plain containers,
nothing else unpickled; a file whose unpickling would import or call anything else is refused, as is a
truncated or corrupt one, each in one line, before anything is written.

Parameter names, theirs -> ours (shapes are the same; ../shared/docs/official-checkpoints.md lists them all):

- conv4: ``layer{i}.conv.*`` -> ``convs.{i-1}.*``, ``layer{i}.bn.*`` -> ``bns.{i-1}.*``;
- resnet8/32/56 and resnet34: the same names, except the shortcut ``*.downsample.{0,1}.*`` -> ``*.shortcut.{0,1}.*``;
- relation head (cat aggregation): ``linear1.*``, ``bn1.*`` -> ``bn.*``, ``linear2.*``.

The run folder is what `ssrr pretrain` writes for relational reasoning: ``config.json`` (method relational, the
backbone, the dataset when given; ssrr's defaults for what the file does not record, such as K and epochs),
``backbone.safetensors`` and ``checkpoints/step-00000000/model.safetensors`` (backbone and relation head), plus
``import.json`` (where the weights came from). It has no optimiser state of ours, so it is evaluated, not resumed.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from ssrr.config import RunConfig
from ssrr.errors import SsrrError
from ssrr.models.backbones import BACKBONES, build_backbone
from ssrr.train.checkpoint import BACKBONE_FILE, CHECKPOINTS, MODEL_FILE

IMPORT_FILE = "import.json"
STEP_DIR = "step-00000000"  # the imported weights, in a checkpoint folder of pretrain's layout
RELATION_NAMES = {"linear1": "linear1", "bn1": "bn", "linear2": "linear2"}
_CONV4_KEY = re.compile(r"layer([1-4])\.(conv|bn)\.(.+)")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def _conv4_name(key: str) -> str:
    """`layer2.bn.weight` -> `bns.1.weight` (a key of another layout is returned unchanged, then refused)."""
    match = _CONV4_KEY.fullmatch(key)
    if match is None:
        return key
    kind = "convs" if match[2] == "conv" else "bns"
    return f"{kind}.{int(match[1]) - 1}.{match[3]}"


def _resnet_name(key: str) -> str:
    """`layer2.0.downsample.1.bias` -> `layer2.0.shortcut.1.bias`; every other name is already ours."""
    return key.replace(".downsample.", ".shortcut.")


# Their backbone parameter name -> ours, per backbone (every backbone of the paper).
RENAMES: dict[str, Callable[[str], str]] = {
    "conv4": _conv4_name,
    "resnet8": _resnet_name,
    "resnet32": _resnet_name,
    "resnet56": _resnet_name,
    "resnet34": _resnet_name,
}


def read_official(path: Path | str) -> dict[str, Any]:
    """The checkpoint's dict, read with `torch.load(weights_only=True)` only; a foreign pickle, a truncated
    or corrupt file, or another layout is a one-line SsrrError."""
    path = Path(path)
    if not path.is_file():
        raise SsrrError(f"{path}: no such checkpoint file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"unsupported [^\n]*?(?=\.?$)", str(exc), re.IGNORECASE | re.MULTILINE)
        what = found[0].strip() if found else "it holds objects other than tensors and plain containers"
        raise SsrrError(f"{path}: refused: not a plain checkpoint of tensors ({what}); nothing was run") from exc
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        detail = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise SsrrError(f"{path}: not a readable torch checkpoint (truncated or corrupt: {detail})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("backbone"), dict):
        raise SsrrError(f"{path}: not the authors' checkpoint format (a dict with a 'backbone' state_dict)")
    return data


def _tensors(state: dict[Any, Any], path: Path, part: str) -> dict[str, Tensor]:
    """A state_dict's tensors by name (a DataParallel `module.` prefix dropped); anything else is refused."""
    out = {}
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise SsrrError(f"{path}: '{part}' holds {key!r}, which is not a named tensor")
        out[key.removeprefix("module.")] = value
    return out


def _fit(expected: dict[str, Tensor], got: dict[str, Tensor]) -> str:
    """'' when `got` has exactly `expected`'s names and shapes, else what differs (first example)."""
    for key, value in expected.items():
        if key not in got:
            return f"missing {key}"
        if tuple(got[key].shape) != tuple(value.shape):
            return f"{key} is {tuple(got[key].shape)}, expected {tuple(value.shape)}"
    extra = [key for key in got if key not in expected]
    return f"unexpected {extra[0]} (and {len(extra) - 1} more)" if extra else ""


def map_backbone(state: dict[str, Tensor], backbone: str) -> dict[str, Tensor]:
    """Their backbone state_dict renamed to ours (shapes unchanged), without checking the fit."""
    rename = RENAMES[backbone]
    return {rename(key): value for key, value in state.items()}


def backbone_of(state: dict[str, Tensor]) -> str | None:
    """The paper's backbone whose every name and shape the state fits, if any."""
    for name in RENAMES:
        if not _fit(build_backbone(name).state_dict(), map_backbone(state, name)):
            return name
    return None


def backbone_tensors(data: dict[str, Any], backbone: str, path: Path) -> dict[str, Tensor]:
    """The file's backbone, renamed to ours and checked to be exactly a `backbone` (names and shapes)."""
    if backbone not in RENAMES:
        raise SsrrError(f"--backbone {backbone}: not one of the paper's backbones ({', '.join(BACKBONES)})")
    state = _tensors(data["backbone"], path, "backbone")
    mapped = map_backbone(state, backbone)
    problem = _fit(build_backbone(backbone).state_dict(), mapped)
    if problem:
        other = backbone_of(state)
        looks = f"; it is a {other} checkpoint" if other else ""
        raise SsrrError(f"{path}: not a {backbone} checkpoint ({problem}{looks})")
    return mapped


def _relation_name(key: str) -> str:
    """`bn1.running_mean` -> `bn.running_mean`; `linear1.*` and `linear2.*` keep their names."""
    layer, _, rest = key.partition(".")
    return f"{RELATION_NAMES.get(layer, layer)}.{rest}"


def relation_tensors(data: dict[str, Any], feature_dim: int, path: Path) -> dict[str, Tensor] | None:
    """The relation head (cat aggregation: first layer (256, 2D)) renamed to ours, or None if the file has none."""
    if "relation" not in data:
        return None
    if not isinstance(data["relation"], dict):
        raise SsrrError(f"{path}: 'relation' is not a state_dict")
    state = _tensors(data["relation"], path, "relation")
    mapped = {_relation_name(key): value for key, value in state.items()}
    from ssrr.models.heads import RelationHead

    problem = _fit(RelationHead(feature_dim, aggregation="cat").state_dict(), mapped)
    if problem:
        raise SsrrError(f"{path}: relation head does not fit a cat head on D={feature_dim} features ({problem})")
    return mapped


def import_official(path: Path | str, backbone: str, name: str, out: Path | str = "runs", dataset: str = "") -> Path:
    """Write `<out>/<name>/` from an authors' checkpoint (see the module docstring); return the run folder.

    Everything is checked before anything is written; the folder appears whole (staged, then renamed) or not
    at all, and an existing run is never replaced.
    """
    path = Path(path)
    if not _NAME.fullmatch(name):
        raise SsrrError(f"--name {name!r}: use letters, digits, '.', '_', '+' and '-' (one folder name)")
    run_dir = Path(out) / name
    if run_dir.exists():
        raise SsrrError(f"{run_dir} already exists: choose another --name (or remove it)")
    data = read_official(path)
    weights = backbone_tensors(data, backbone, path)
    from ssrr.methods.base import method_class, with_method_defaults

    config = RunConfig(method="relational", dataset=dataset, backbone=backbone, out=str(out), name=name)
    config = with_method_defaults(config)
    module = build_backbone(backbone)
    module.load_state_dict(weights)
    method = method_class("relational")(config, module, 0)
    head = relation_tensors(data, module.feature_dim, path)
    if head is not None:
        relation: torch.nn.Module = method.head  # type: ignore[assignment]
        relation.load_state_dict(head)
    provenance = {
        "format": "official (authors' public implementation)",
        "source": str(path.resolve()),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "backbone": backbone,
        "relation_head": head is not None,
        "optimizer_state": "optimizer" in data,
        "note": "config.json holds ssrr's defaults for settings the file does not record (K, epochs, ...)",
    }
    _write_run(run_dir, config, method, backbone, head is not None, provenance)
    return run_dir


def _write_run(
    run_dir: Path, config: RunConfig, method: torch.nn.Module, backbone: str, with_head: bool, info: dict[str, Any]
) -> None:
    """Stage the run folder beside its final place, then rename it there (all or nothing)."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.import-", dir=run_dir.parent))
    try:
        metadata = {"backbone": backbone, "step": "0"}
        state = {k: v.detach().contiguous().cpu() for k, v in method.state_dict().items()}
        if not with_head:
            state = {k: v for k, v in state.items() if k.startswith("backbone.")}
        config.save(staging)
        (staging / CHECKPOINTS / STEP_DIR).mkdir(parents=True)
        save_file(state, str(staging / CHECKPOINTS / STEP_DIR / MODEL_FILE), metadata=metadata)
        backbone_state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
        save_file(backbone_state, str(staging / BACKBONE_FILE), metadata=metadata)
        (staging / IMPORT_FILE).write_text(json.dumps(info, indent=2) + "\n")
        staging.chmod(0o755)
        staging.rename(run_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
