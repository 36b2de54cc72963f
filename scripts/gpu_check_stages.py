"""The measuring stages of scripts/gpu_check.sh that no `ssrr` command gives, and its closing table.

    python scripts/gpu_check_stages.py pipeline SHARDS cpu|gpu STEPS OUT.json   # views/s, peak memory of DALI
    python scripts/gpu_check_stages.py syncs SHARDS cpu|cuda OUT.json           # host syncs per training step
    python scripts/gpu_check_stages.py table WORK cpu|cuda OUTDIR               # the one table, printed last

Runs uninstalled: gpu_check.sh puts the repository on PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

K, M = int(os.environ.get("SSRR_CHECK_K", 32)), int(os.environ.get("SSRR_CHECK_M", 64))  # views, images per step


def pipeline(shards: str, device: str, steps: int, out: str) -> None:
    """DALI's views/s alone (K=32, M=64) and, on the GPU, the device memory DALI holds beyond torch's."""
    import torch

    from ssrr.bench.pipeline import bench_pipeline

    cuda = device == "gpu"
    used_before = _device_used() if cuda else 0
    result = bench_pipeline(shards, k=K, batch=M, device="cuda" if cuda else "cpu", repeats=3, steps=steps,
                            baseline=False)  # fmt: skip
    if cuda:  # what the device has in use beyond torch's own pool: DALI's buffers and its CUDA context
        result["dali_memory_mb"] = (_device_used() - used_before - torch.cuda.memory_reserved()) / 2**20
        result["torch_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    Path(out).write_text(json.dumps(result) + "\n")


def _device_used() -> int:
    import torch

    free, total = torch.cuda.mem_get_info()
    return int(total - free)


def syncs(shards: str, device: str, out: str) -> None:
    """Host synchronisations per training step of real `ssrr pretrain` runs: torch's sync debug mode warns at
    each one; two runs of different lengths cancel what happens once per run (setup, checkpoint, summary)."""
    import torch

    from ssrr.config import RunConfig
    from ssrr.train.loop import pretrain

    counts: dict[int, int] = {}
    with tempfile.TemporaryDirectory() as runs:
        for steps in (8, 24):
            config = RunConfig(dataset=shards, backbone="conv4", k=K, batch=M, precision="auto", device=device,
                               epochs=1, max_steps=steps, out=runs, name=f"syncs-{steps}")  # fmt: skip
            if device == "cuda":
                torch.cuda.set_sync_debug_mode("warn")
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    pretrain(config, show=False)
            finally:
                if device == "cuda":
                    torch.cuda.set_sync_debug_mode(0)
            counts[steps] = sum("synchroniz" in str(w.message) for w in caught)
    per_step = (counts[24] - counts[8]) / 16 if device == "cuda" else None
    Path(out).write_text(json.dumps({"syncs": counts, "syncs_per_step": per_step}) + "\n")


def _load(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def _gpu_tests(work: Path) -> str:
    try:
        lines = [line for line in (work / "gpu-tests.txt").read_text().splitlines() if line.strip()]
    except OSError:
        return "not run"
    return lines[-1].strip("= ") if lines else "no output"


def _number(value: Any, fmt: str) -> str:
    return fmt.format(value) if isinstance(value, (int, float)) else "failed"


def rows(work: Path, mode: str) -> list[tuple[str, str]]:
    """The table's rows from what the stages left in `work`."""
    env = _load(work / "env.json")
    gpus = ", ".join(f"{g['name']} ({g['memory_gib']} GiB)" for g in env.get("gpus", [])) or env.get("cpu", {}).get(
        "model", "unknown"
    )
    driver = env.get("driver", {})
    builds = (
        f"torch {env.get('torch', {}).get('version')} (CUDA {env.get('torch', {}).get('cuda_build')}), "
        f"DALI {env.get('dali', {}).get('version')} (CUDA {env.get('dali', {}).get('cuda_build')})"
    )
    out = [
        ("card", gpus),
        ("driver", f"{driver.get('version')} (CUDA {driver.get('cuda')})" if driver else "unknown"),
        ("builds", builds if env else "unknown"),
        ("GPU tests (pytest -m gpu)", _gpu_tests(work) if mode != "cpu" else "not run (CPU mode)"),
    ]
    for name in ("raw", "jpeg"):
        pipe = _load(work / f"pipeline-{name}.json")
        out.append((f"pipeline views/s, {name} shards (K={K}, M={M})", _number(pipe.get("views_per_s"), "{:,.0f}")))
    for backbone in ("conv4", "resnet32"):
        run = _load(work / "runs" / backbone / "throughput.json")
        views, wait = _number(run.get("views_per_s"), "{:,.0f}"), _number(run.get("data_wait"), "{:.1%}")
        figure = f"{views} views/s, data wait {wait}"
        out.append((f"pretrain --amp {backbone} (K={K}, M={M}, {run.get('precision', '?')})", figure))
        out.append((f"peak torch memory, {backbone} run", _number(run.get("memory_mb"), "{:,.0f} MB")))
    dali = _number(_load(work / "pipeline-raw.json").get("dali_memory_mb"), "{:,.0f} MB")
    out.append(("peak DALI memory (pipeline, raw)", dali if mode != "cpu" else "n/a (CPU)"))
    sync = _load(work / "syncs.json")
    per_step = sync.get("syncs_per_step")
    out.append(("host syncs per training step", _number(per_step, "{:.2f}") if mode != "cpu" else "n/a (CPU)"))
    trained, random = _load(work / "linear-pretrained.json"), _load(work / "linear-random.json")
    out.append(("linear top-1: conv4 pretrained vs random weights",
                f"{_number(trained.get('top1'), '{:.2f}%')} vs {_number(random.get('top1'), '{:.2f}%')}"))  # fmt: skip
    return out


def table(work: str, mode: str, outdir: str) -> None:
    """Print the one table (last); write it with the stages' statuses (summary.md) and every figure
    (results.json) under `outdir`."""
    folder = Path(work)
    stages = [line.split("\t") for line in (folder / "stages.tsv").read_text().splitlines() if line]
    failed = [name for name, rc, _ in stages if rc != "0"]
    stage_lines = ["| stage | exit | seconds |", "|---|---|---|", *(f"| {n} | {rc} | {s} |" for n, rc, s in stages)]
    lines = [f"| ssrr GPU check ({mode}) | result |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows(folder, mode)]
    lines.append(f"| stages failed | {', '.join(failed) or 'none'} |")
    text = "\n".join(lines) + "\n"
    Path(outdir, "summary.md").write_text("\n".join(stage_lines) + "\n\n" + text)
    results = {name: _load(path) for name, path in ((p.stem, p) for p in folder.glob("*.json"))}
    results["stages"] = {name: {"exit": int(rc), "seconds": int(s)} for name, rc, s in stages}
    Path(outdir, "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(text, end="")


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "pipeline":
        pipeline(args[0], args[1], int(args[2]), args[3])
    elif command == "syncs":
        syncs(args[0], args[1], args[2])
    elif command == "table":
        table(args[0], args[1], args[2])
    else:
        raise SystemExit(f"unknown stage {command!r} (pipeline, syncs, table)")
