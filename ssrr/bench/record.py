"""Write benchmark results into docs/benchmarks.md, each in its own marked block, with the command and machine."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from ssrr.hardware import FLAGS_THAT_MATTER, cpu_flags, cpu_model

DEFAULT_FILE = Path("docs/benchmarks.md")
HEADER = (
    "# Benchmarks\n\nMeasured results, each with the command that produced it. Blocks between markers are "
    "rewritten\nby `ssrr bench ...`; prose outside them is kept.\n"
)


def machine() -> dict[str, Any]:
    """What the numbers were measured on: CPU model and the flags that decide its speed (bf16 is native only with
    avx512_bf16 or AMX), cores, torch and DALI versions, and a GPU's name when one is there."""
    flags = cpu_flags()
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_flags": [flag for flag in FLAGS_THAT_MATTER if flag in flags],
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
    except ImportError:  # pragma: no cover
        pass
    try:
        import nvidia.dali as dali

        info["dali"] = dali.__version__
    except ImportError:  # pragma: no cover
        pass
    return info


def command_line() -> str:
    args = [Path(sys.argv[0]).name if sys.argv[0].endswith("ssrr") else "ssrr", *sys.argv[1:]]
    return " ".join(args)


def record(name: str, result: dict[str, Any], path: Path = DEFAULT_FILE, command: str | None = None) -> None:
    """Replace (or append) the block `name` in `path` with `result`."""
    text = path.read_text() if path.exists() else HEADER
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    body = (
        f"{start}\n### `{name}`\n\n"
        f"Command: `{command or command_line()}`  \n"
        f"When: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: {json.dumps(machine())}\n\n"
        f"```json\n{json.dumps(result, indent=2)}\n```\n{end}"
    )
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: body, text) if pattern.search(text) else text.rstrip() + "\n\n" + body + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
