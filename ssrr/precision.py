"""How a module runs on a batch: device, precision (autocast dtype, loss scaling), dtype of the views, memory format.

Every forward pass in ssrr goes through one `Execution`: the training step, DeepCluster's clustering pass, the
k-NN probe, feature extraction for every evaluation protocol and the benchmarks. So low-precision views never
meet float32 weights outside autocast, and a precision choice made once (`--precision`, `--amp`) holds everywhere.

Precisions (`--precision`):
- `fp32`: float32 throughout.
- `bf16`: bf16 autocast, forced even where the device only emulates it (AVX2 CPUs: slow but correct).
- `fp16`: fp16 autocast with dynamic loss scaling (CUDA, and CPUs where torch runs fp16 autocast).
- `auto` (what `--amp` means): bf16 where it is native (Ampere+ GPUs, CPUs with AVX-512-BF16 or AMX), fp16 with
  loss scaling on GPUs without bf16, float32 on CPUs that would only emulate bf16.

`SSRR_PRECISION=bf16|fp16|fp32|auto` in the environment replaces every requested precision (so a whole test suite
runs in one precision whatever its defaults); the run records that it came from there.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, get_args

import torch
from torch import nn

from ssrr.errors import SsrrError
from ssrr.hardware import native_bf16

Precision = Literal["auto", "fp32", "bf16", "fp16"]  # what a run may ask for (RunConfig.precision)
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
ENV_OVERRIDE = "SSRR_PRECISION"
_AUTOCAST_DTYPE = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

ModuleT = TypeVar("ModuleT", bound=nn.Module)


@dataclass(frozen=True)
class Execution:
    """Where and how modules run: one device, one resolved precision, one memory format."""

    device: torch.device
    precision: Precision = "fp32"  # resolved: fp32 | bf16 | fp16
    channels_last: bool = False
    requested: str = "fp32"  # what was asked for (auto | fp32 | bf16 | fp16), for the record
    native: bool = True  # whether the precision runs natively on the device (bf16 on an AVX2 CPU: False)
    source: str = "option"  # option | environment (SSRR_PRECISION)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return _AUTOCAST_DTYPE[self.precision]

    @property
    def view_dtype(self) -> torch.dtype:
        """The dtype the pipeline delivers views in: the autocast dtype (half the bytes to copy), else float32."""
        return self.autocast_dtype or torch.float32

    def autocast(self) -> AbstractContextManager[Any]:
        """The autocast context of this precision (disabled in float32)."""
        dtype = self.autocast_dtype
        return torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    def prepare(self, module: ModuleT) -> ModuleT:
        """Move a module to the device and memory format (weights stay float32: autocast casts per op)."""
        module = module.to(self.device)
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        return module

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """A batch of images on the device, in the memory format; its dtype is left as delivered."""
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, module: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """`module(x)` under this precision, returned in float32 (features, logits)."""
        with self.autocast():
            return module(self.inputs(x)).float()

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """Dynamic loss scaling for fp16 (bf16 and float32 need none)."""
        return torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None

    def describe(self) -> str:
        """One line for summaries: what runs, and why when it differs from what was asked."""
        text: str = self.precision
        if self.requested == "auto":
            text += " (auto" + ("" if self.precision != "fp32" else ": no native bf16 on this device") + ")"
        elif not self.native:
            text += " (emulated on this device: slow)"
        if self.source == "environment":
            text += f" [{ENV_OVERRIDE}]"
        return text

    def record(self) -> dict[str, Any]:
        """What a run saves about its precision (environment.json, throughput.json)."""
        return {
            "precision": self.precision,
            "precision_requested": self.requested,
            "precision_native": self.native,
            "precision_source": self.source,
        }


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    """Backward and an optimizer step, through the loss scaler when there is one (fp16)."""
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()


def as_execution(where: Execution | torch.device | str) -> Execution:
    """An Execution as given, or float32 on a device given by name."""
    return where if isinstance(where, Execution) else Execution(torch.device(where))


def check_precision(name: str) -> Precision:
    for known in PRECISIONS:
        if name == known:
            return known
    raise SsrrError(f"--precision must be one of {', '.join(PRECISIONS)}, got {name!r}")


def resolve(requested: str, device: torch.device | str, *, channels_last: bool = False) -> Execution:
    """The execution for a requested precision on a device (see the module docstring for the rules)."""
    source = "option"
    override = os.environ.get(ENV_OVERRIDE, "").strip()
    if override:
        requested, source = override, "environment"
    asked = check_precision(requested)
    dev = torch.device(device)
    precision: Precision
    if asked == "auto":
        if dev.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "bf16" if native_bf16(dev) else "fp32"
    else:
        precision = asked
    if precision == "fp16" and not fp16_supported(dev):
        raise SsrrError(f"--precision fp16: torch cannot run fp16 autocast with loss scaling on {dev.type}")
    native = precision != "bf16" or native_bf16(dev)
    return Execution(dev, precision, channels_last, requested, native, source)


def fp16_supported(device: torch.device) -> bool:
    """Whether fp16 autocast and a GradScaler both work on this device type (a tiny conv, forward and backward)."""
    if device.type == "cuda":
        return torch.cuda.is_available()
    try:
        conv = nn.Conv2d(3, 4, 3).to(device)
        x = torch.randn(2, 3, 8, 8, device=device)
        with torch.autocast(device.type, dtype=torch.float16):
            y = conv(x)
        scaler = torch.amp.GradScaler(device.type)
        scaler.scale(y.float().sum()).backward()
        return y.dtype == torch.float16
    except (RuntimeError, TypeError, AssertionError):
        return False
