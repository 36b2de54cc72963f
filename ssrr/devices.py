"""Which device a command runs on: one rule for `ssrr pretrain`, every `ssrr eval` protocol and every `ssrr bench`.

- ``--device cpu``: the CPU.
- ``--device cuda`` (or ``cuda:N``): that GPU, or an `SsrrError` naming why it cannot be used: no GPU, torch built
  without CUDA, a driver too old for torch's CUDA build or for DALI's, torch seeing no device. Callers ask before
  they write anything, so a refused run leaves nothing behind.
- ``--device auto``: the GPU when it is usable, else the CPU; when a GPU is present but unusable, one line on stderr
  says why (a user with a GPU should never train on the CPU without a word).

The facts come from probes that need no GPU: torch's build (``torch.version.cuda``), DALI's (the installed
``nvidia-dali-cudaXYZ`` distribution), and the driver (``cuDriverGetVersion`` through libcuda, which reports the
newest CUDA the driver supports, and its version string from /proc or nvidia-smi). A CUDA build runs on a driver
of the same CUDA major version or newer (CUDA's minor-version compatibility), so majors are compared.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ssrr.errors import SsrrError

DALI_DISTRIBUTIONS = {"nvidia-dali-cuda110": "11.0", "nvidia-dali-cuda120": "12.0", "nvidia-dali-cuda130": "13.0"}
INSTALL_CUDA12 = (
    'pip install "torch>=2.11,<2.16" "torchvision>=0.26,<0.30" --index-url https://download.pytorch.org/whl/cu126 '
    "&& pip install -r requirements-cuda12.txt && pip install --no-deps -e .  (README, Install: CUDA 12 drivers)"
)
INSTALL_CUDA13 = "pip install -e .  (torch's default CUDA 13 wheels and nvidia-dali-cuda130; README, Install)"


@dataclass(frozen=True)
class CudaFacts:
    """What decides whether CUDA is usable here, gathered without touching a GPU."""

    torch_cuda: str | None  # torch's CUDA build ("13.0"), None for a CPU-only build
    dali_cuda: str | None  # DALI's CUDA build ("13.0"), None when no nvidia-dali-cudaXYZ is installed
    driver_cuda: str | None  # the newest CUDA the driver supports ("12.8"), None without a driver
    driver_version: str | None  # the driver's own version ("580.65.06"), None when unknown
    torch_sees: int  # CUDA devices torch can use (0 when torch.cuda.is_available() is False)

    @property
    def gpu_present(self) -> bool:
        """A GPU (or at least its driver) is on this machine, usable or not."""
        return self.driver_cuda is not None or self.driver_version is not None or self.torch_sees > 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _major(version: str | None) -> int | None:
    match = re.match(r"(\d+)", version or "")
    return int(match.group(1)) if match else None


def driver_cuda() -> str | None:
    """The newest CUDA version the installed driver supports (libcuda's cuDriverGetVersion), or None."""
    for name in ("libcuda.so.1", "libcuda.so"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        value = ctypes.c_int(0)
        if lib.cuDriverGetVersion(ctypes.byref(value)) == 0 and value.value > 0:
            return f"{value.value // 1000}.{value.value % 1000 // 10}"
    return None


def driver_version() -> str | None:
    """The NVIDIA driver's version string (/proc/driver/nvidia/version, else nvidia-smi), or None."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
        match = re.search(r"Kernel Module\s+(?:for\s+\S+\s+)?(\d+\.\d+(?:\.\d+)?)", text)
        if match:
            return match.group(1)
    except OSError:
        pass
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = done.stdout.strip().splitlines()
    return lines[0].strip() if done.returncode == 0 and lines else None


def dali_cuda() -> str | None:
    """DALI's CUDA build, from the name of the installed distribution (nvidia-dali-cuda120 -> "12.0")."""
    for name, version in DALI_DISTRIBUTIONS.items():
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        return version
    return None


def torch_devices() -> int:
    """CUDA devices torch can use: 0 when torch.cuda.is_available() is False."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def cuda_facts() -> CudaFacts:
    """The probes above, together."""
    return CudaFacts(torch.version.cuda, dali_cuda(), driver_cuda(), driver_version(), torch_devices())


def install_line(facts: CudaFacts) -> str | None:
    """The install line that fits this machine's driver, when the installed builds do not."""
    driver = _major(facts.driver_cuda)
    if driver is None:
        return None
    builds = [b for b in (_major(facts.torch_cuda), _major(facts.dali_cuda)) if b is not None]
    if facts.torch_cuda is not None and all(b <= driver for b in builds):
        return None
    return INSTALL_CUDA12 if driver == 12 else INSTALL_CUDA13 if driver >= 13 else None


def cuda_problem(facts: CudaFacts) -> str | None:
    """Why CUDA cannot be used here (one phrase naming CUDA), or None when it can."""
    fix = install_line(facts)
    hint = f"; install: {fix}" if fix else ""
    driver = f"driver {facts.driver_version or '(version unknown)'}, CUDA {facts.driver_cuda}"
    if not facts.gpu_present:
        return "no CUDA GPU on this machine (no NVIDIA driver found)"
    if facts.torch_cuda is None:
        return f"torch {torch.__version__} is a CPU-only build without CUDA{hint}"
    if facts.driver_cuda is not None and (_major(facts.driver_cuda) or 0) < (_major(facts.torch_cuda) or 0):
        return f"the NVIDIA {driver} is too old for torch's CUDA {facts.torch_cuda} build{hint}"
    if facts.dali_cuda and facts.driver_cuda and (_major(facts.driver_cuda) or 0) < (_major(facts.dali_cuda) or 0):
        return f"DALI's CUDA {facts.dali_cuda} build does not match the NVIDIA {driver}{hint}"
    if facts.torch_sees == 0:
        return f"torch (CUDA {facts.torch_cuda}) sees no CUDA device ({driver})"
    return None


def _warn(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def choose_device(
    requested: str | torch.device = "auto",
    *,
    facts: CudaFacts | None = None,
    warn: Callable[[str], None] = _warn,
) -> torch.device:
    """The device a command runs on (the rule in the module docstring); `facts` defaults to `cuda_facts()`."""
    if isinstance(requested, torch.device):
        requested = str(requested)
    name = requested.strip().lower()
    if name == "gpu":
        name = "cuda"
    if name == "cpu":
        return torch.device("cpu")
    if name != "auto" and not re.fullmatch(r"cuda(:\d+)?", name):
        raise SsrrError(f"--device {requested}: not a device (auto, cpu, cuda, cuda:N)")
    facts = facts or cuda_facts()
    problem = cuda_problem(facts)
    if name == "auto":
        if problem is None:
            return torch.device("cuda")
        if facts.gpu_present:
            warn(f"ssrr: --device auto runs on the CPU: a GPU is present but unusable: {problem}")
        return torch.device("cpu")
    if problem is not None:
        raise SsrrError(f"--device {requested}: {problem}")
    device = torch.device(name)
    if device.index is not None and device.index >= facts.torch_sees:
        raise SsrrError(f"--device {requested}: CUDA device {device.index} does not exist ({facts.torch_sees} found)")
    return device
