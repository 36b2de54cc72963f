"""`ssrr export`: a run's backbone as a file that torchvision, timm, safetensors, TorchScript or ONNX users load.

Formats (`FORMATS`, one writer each; every file is written atomically):

- `torchvision` (tv:NAME runs, and the paper's resnet34, which has torchvision's ResNet-34 layout): the state
  dict of `torchvision.models.get_model(NAME, weights=None)`, saved with `torch.save`, classifier included: the
  trained backbone's tensors plus the model's own classifier freshly initialised (torchvision's init, seed 0),
  so `torchvision.models.resnet18(weights=None).load_state_dict(torch.load(FILE), strict=True)` loads it as any
  torchvision checkpoint; set `model.fc = torch.nn.Identity()` (the model's last Linear) for the pooled
  features, or train a new classifier there. A `--stem cifar` run needs the same stem first:
  `model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False); model.maxpool = torch.nn.Identity()`.
- `timm` (timm:NAME runs): the timm model's state dict without classifier (`num_classes=0`), as safetensors when
  FILE ends in `.safetensors`, else `torch.save`; loaded by timm's documented route
  `timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=FILE), num_classes=0)`.
- `safetensors` (any backbone): ssrr's own weights file (the run's `backbone.safetensors`, metadata included).
- `torchscript` (any backbone): `torch.jit.trace` of the backbone in eval mode: `torch.jit.load(FILE)(images)`.
- `onnx` (any backbone; the optional `.[onnx]` extra): the legacy TorchScript-based `torch.onnx.export`, input
  `images` (N, 3, H, W) with a dynamic batch, output `features` (N, D); checked with `onnx.checker`.

Every format takes normalised float images (pixel / 255, minus the pretraining data's mean, over its std) and
gives the (N, D) features ssrr's evaluation uses.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ssrr.errors import SsrrError
from ssrr.files import deterministic_safetensors, write_bytes_atomic
from ssrr.models.external import ExternalBackbone, apply_cifar_stem, timm_model, torchvision_model
from ssrr.options import require_feature
from ssrr.train.checkpoint import LoadedBackbone, load_backbone

PAPER_TO_TORCHVISION = {"resnet34": "resnet34"}  # the paper's backbones with torchvision's layout


@dataclass(frozen=True)
class Exported:
    """What was written: the file, its format, the backbone, and how to load it (one line)."""

    path: Path
    format: str
    backbone: str
    load: str


def _trained_tensors(loaded: LoadedBackbone) -> dict[str, torch.Tensor]:
    """The backbone's tensors, float32 on the CPU, contiguous (safetensors refuses shared storage)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in loaded.module.state_dict().items()}


def _stem_of(loaded: LoadedBackbone) -> str:
    return str(getattr(loaded.module, "stem_kind", "default"))


def _torchvision_state(loaded: LoadedBackbone) -> tuple[str, dict[str, torch.Tensor]]:
    """(torchvision model name, its full state dict: the trained backbone plus a fresh classifier)."""
    if isinstance(loaded.module, ExternalBackbone) and loaded.name.startswith("tv:"):
        model = loaded.name.removeprefix("tv:")
        trained = {k.removeprefix("net."): v for k, v in _trained_tensors(loaded).items()}
    elif loaded.name in PAPER_TO_TORCHVISION:
        model = PAPER_TO_TORCHVISION[loaded.name]
        trained = {k.replace(".shortcut.", ".downsample."): v for k, v in _trained_tensors(loaded).items()}
    else:
        raise _cannot(loaded, "torchvision", "tv:NAME backbones and resnet34")
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the fresh classifier is the same in every export
        fresh = torchvision_model(model)
    if _stem_of(loaded) == "cifar":
        apply_cifar_stem(fresh, loaded.name)
    target = fresh.state_dict()
    stray = sorted(set(trained) - set(target))
    if stray:
        raise SsrrError(f"{loaded.source}: tensors that torchvision's {model} lacks, e.g. {stray[0]}")
    state = {**target, **trained}
    fresh.load_state_dict(state, strict=True)  # shapes too: a mismatch is a bug here, not a user's problem
    return model, state


def _write_torchvision(loaded: LoadedBackbone, out: Path) -> str:
    model, state = _torchvision_state(loaded)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes_atomic(out, buffer.getvalue())
    stem = " after the --stem cifar lines of `ssrr export --help`" if _stem_of(loaded) == "cifar" else ""
    return f"torchvision.models.{model}(weights=None).load_state_dict(torch.load({str(out)!r}), strict=True){stem}"


def _write_timm(loaded: LoadedBackbone, out: Path) -> str:
    if not (isinstance(loaded.module, ExternalBackbone) and loaded.name.startswith("timm:")):
        raise _cannot(loaded, "timm", "timm:NAME backbones")
    model = loaded.name.removeprefix("timm:")
    state = {k.removeprefix("net."): v for k, v in _trained_tensors(loaded).items()}
    fresh = timm_model(model)
    if _stem_of(loaded) == "cifar":
        apply_cifar_stem(fresh, loaded.name)
    fresh.load_state_dict(state, strict=True)
    if out.suffix == ".safetensors":
        write_bytes_atomic(out, deterministic_safetensors(state, None))
    else:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        write_bytes_atomic(out, buffer.getvalue())
    return (
        f"timm.create_model({model!r}, pretrained=True, pretrained_cfg_overlay=dict(file={str(out)!r}), num_classes=0)"
    )


def _write_safetensors(loaded: LoadedBackbone, out: Path) -> str:
    metadata = {"backbone": loaded.name}
    if _stem_of(loaded) != "default":
        metadata["stem"] = _stem_of(loaded)
    write_bytes_atomic(out, deterministic_safetensors(_trained_tensors(loaded), metadata))
    return f"ssrr.train.checkpoint.load_backbone({str(out)!r}), or safetensors.torch.load_file({str(out)!r})"


def _example(loaded: LoadedBackbone) -> torch.Tensor:
    """A batch of two images at the backbone's pretraining size (32x32 when unknown) to trace with."""
    height, width = loaded.image_size or (32, 32)
    return torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0))


def _eval_copy(loaded: LoadedBackbone) -> nn.Module:
    return loaded.module.cpu().float().eval()


def _write_torchscript(loaded: LoadedBackbone, out: Path) -> str:
    with warnings.catch_warnings():  # torch.jit's deprecation notice: TorchScript is still what the users asked for
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(_eval_copy(loaded), _example(loaded), check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
    write_bytes_atomic(out, buffer.getvalue())
    return f"torch.jit.load({str(out)!r})(images)"


def _write_onnx(loaded: LoadedBackbone, out: Path) -> str:
    require_feature("onnx", "--format onnx")
    import onnx

    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the legacy exporter's deprecation notice (the new one needs onnxscript)
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _eval_copy(loaded),
            (_example(loaded),),
            buffer,  # type: ignore[arg-type]  # the legacy exporter writes to any binary file object
            dynamo=False,
            input_names=["images"],
            output_names=["features"],
            dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
        )
    data = buffer.getvalue()
    onnx.checker.check_model(onnx.load_from_string(data))
    write_bytes_atomic(out, data)
    return f"onnxruntime.InferenceSession({str(out)!r}).run(None, {{'images': images}})"


FORMATS: dict[str, Callable[[LoadedBackbone, Path], str]] = {
    "torchvision": _write_torchvision,
    "timm": _write_timm,
    "safetensors": _write_safetensors,
    "torchscript": _write_torchscript,
    "onnx": _write_onnx,
}


def _cannot(loaded: LoadedBackbone, fmt: str, which: str) -> SsrrError:
    return SsrrError(f"{loaded.source}: a {loaded.name} backbone cannot be exported to {fmt} (only {which})")


def export(spec: str | Path, fmt: str, out: str | Path) -> Exported:
    """Write the backbone of `spec` (a run folder, checkpoint, weights file or random:NAME) to `out` in `fmt`."""
    if fmt not in FORMATS:
        raise SsrrError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    path = Path(out)
    if path.is_dir():
        raise SsrrError(f"--out {path}: a folder; name the file to write")
    if not path.parent.is_dir():
        raise SsrrError(f"--out {path}: no folder {path.parent}")
    loaded = load_backbone(spec)
    load = FORMATS[fmt](loaded, path)
    return Exported(path, fmt, loaded.name, load)
