"""`ssrr env`: what this machine runs ssrr with, like `accelerate env`.

Python, torch and its CUDA build, DALI and its CUDA build, accelerate, the NVIDIA driver, each GPU (name, memory,
bf16), the CPU and its flags, which device `--device auto` picks and what `--amp` gives there; when the builds
and the driver do not fit, the install line that fixes it (`ssrr.devices`).
"""

from __future__ import annotations

import importlib.metadata
import platform
from typing import Any

import torch

from ssrr import __version__
from ssrr.devices import CudaFacts, choose_device, cuda_facts, cuda_problem, install_line
from ssrr.hardware import FLAGS_THAT_MATTER, cores, cpu_flags, cpu_model, native_bf16
from ssrr.precision import resolve


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _dali_version() -> str | None:
    try:
        import nvidia.dali as dali
    except ImportError:
        return None
    return str(dali.__version__)


def _gpus(count: int) -> list[dict[str, Any]]:
    out = []
    for index in range(count):
        props = torch.cuda.get_device_properties(index)
        out.append(
            {
                "index": index,
                "name": props.name,
                "memory_gib": round(props.total_memory / 2**30, 1),
                "capability": f"{props.major}.{props.minor}",
                "bf16": props.major >= 8,
            }
        )
    return out


def environment(facts: CudaFacts | None = None) -> dict[str, Any]:
    """The report as one JSON-ready object (`ssrr env --json`)."""
    facts = facts or cuda_facts()
    device = choose_device("auto", facts=facts, warn=lambda _: None)
    amp = resolve("auto", device)
    flags = cpu_flags()
    return {
        "ssrr": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": {"version": torch.__version__, "cuda_build": facts.torch_cuda},
        "dali": {"version": _dali_version(), "cuda_build": facts.dali_cuda},
        "accelerate": _version("accelerate"),
        "driver": {"version": facts.driver_version, "cuda": facts.driver_cuda},
        "gpus": _gpus(facts.torch_sees) if device.type == "cuda" else [],
        "cpu": {
            "model": cpu_model(),
            "cores": cores(),
            "flags": [flag for flag in FLAGS_THAT_MATTER if flag in flags],
            "bf16_native": native_bf16("cpu"),
        },
        "device_auto": device.type,
        "cuda_problem": cuda_problem(facts),
        "amp": {"device": device.type, "precision": amp.precision, "describe": amp.describe()},
        "fix": install_line(facts),
    }


def _build(part: dict[str, Any]) -> str:
    build = f"CUDA {part['cuda_build']} build" if part["cuda_build"] else "no CUDA build"
    return f"{part['version'] or 'not installed'} ({build})"


def environment_lines(env: dict[str, Any]) -> list[str]:
    """The report as `label: value` lines (`ssrr env`)."""
    driver = env["driver"]
    lines = [
        f"ssrr: {env['ssrr']}",
        f"Python: {env['python']} ({env['platform']})",
        f"torch: {_build(env['torch'])}",
        f"DALI: {_build(env['dali'])}",
        f"accelerate: {env['accelerate'] or 'not installed'}",
        f"NVIDIA driver: {driver['version'] or 'none found'}"
        + (f" (supports CUDA up to {driver['cuda']})" if driver["cuda"] else ""),
    ]
    for gpu in env["gpus"]:
        lines.append(
            f"GPU {gpu['index']}: {gpu['name']}, {gpu['memory_gib']} GiB, compute {gpu['capability']}, "
            f"bf16 {'yes' if gpu['bf16'] else 'no'}"
        )
    cpu = env["cpu"]
    lines.append(f"CPU: {cpu['model']}, {cpu['cores']} cores, flags {', '.join(cpu['flags']) or 'none of note'}")
    lines.append(f"--device auto: {env['device_auto']}" + (f" ({env['cuda_problem']})" if env["cuda_problem"] else ""))
    lines.append(f"--amp: {env['amp']['precision']} on {env['amp']['device']} ({env['amp']['describe']})")
    if env["fix"]:
        lines.append(f"fix: {env['fix']}")
    return lines
