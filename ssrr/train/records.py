"""What a pretraining run records beside its checkpoints: the environment, per-epoch rates, the time so far.

`environment.json` (where and how the run ran), `metrics.jsonl` (one record per epoch, appended: a resumed run
keeps its history), `throughput.json` (the last epoch's rates, the wall time, the projected time of the whole
configured run). Pure functions of what the loop hands them, so the loop itself stays a sequence of stages.
"""

from __future__ import annotations

import json
import os
import platform
import resource
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from ssrr import __version__
from ssrr.config import RunConfig
from ssrr.files import keep_lines
from ssrr.precision import Execution

METRICS_FILE = "metrics.jsonl"
THROUGHPUT_FILE = "throughput.json"
ENVIRONMENT_FILE = "environment.json"


def memory_mb(device: torch.device) -> float:
    """Peak memory so far: allocated on the GPU, else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # peak RSS, KiB on Linux


def environment(
    accelerator: Accelerator,
    config: RunConfig,
    execution: Execution,
    image_size: tuple[int, int],
    machines: int = 1,
) -> dict[str, Any]:
    """environment.json: versions, device, processes and machines, the batch per process and global, precision."""
    import accelerate
    import nvidia.dali as dali

    device = accelerator.device
    return {
        "ssrr": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "dali": dali.__version__,
        "accelerate": accelerate.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "cpu_count": os.cpu_count(),
        "num_processes": accelerator.num_processes,
        "num_machines": machines,
        "batch_per_process": config.batch,  # M: images per step on each process
        "global_batch": config.batch_size * accelerator.num_processes * config.grad_accum,  # images per optimizer step
        "distributed_type": str(accelerator.distributed_type),
        "mixed_precision": {"fp32": "no"}.get(execution.precision, execution.precision),
        **execution.record(),
        "image_size": list(image_size),
        "sync_bn": config.sync_bn,
    }


class LaggedSums:
    """The running sums of device scalars (loss, accuracies) read for the live display without a host sync.

    `request` copies them, non-blocking, into pinned host memory and records an event; `latest` gives the newest
    copy that has landed (with the step count it was taken at), so the display runs a few steps behind the GPU
    and a step never waits for it. On the CPU the copy is immediate."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._pending: tuple[list[str], torch.Tensor, int, Any] | None = None
        self._latest: tuple[dict[str, float], int] = ({}, 0)

    def request(self, sums: dict[str, torch.Tensor], steps: int) -> None:
        """Start reading `sums` (taken after `steps` steps); skipped while an earlier read is still in flight."""
        if (self._pending is not None and not self._landed()) or not sums:
            return
        keys = sorted(sums)
        stacked = torch.stack([sums[key].detach().float() for key in keys])
        if self.device.type != "cuda":
            self._latest = (dict(zip(keys, stacked.tolist(), strict=True)), steps)
            return
        host = torch.empty(len(keys), dtype=torch.float32, pin_memory=True)
        host.copy_(stacked, non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        self._pending = (keys, host, steps, event)

    def _landed(self) -> bool:
        if self._pending is None or not self._pending[3].query():
            return False
        keys, host, steps, _ = self._pending
        self._latest, self._pending = (dict(zip(keys, host.tolist(), strict=True)), steps), None
        return True

    def latest(self) -> tuple[dict[str, float], int]:
        """The newest sums on the host and the steps they cover (({}, 0) before the first has landed)."""
        self._landed()
        return self._latest


def rates(
    sums: dict[str, torch.Tensor] | dict[str, float],
    steps: int,
    elapsed: float,
    wait: float,
    batch: int,
    views_per_image: int,
    pairs_per_step: int,
    processes: int,
    device: torch.device,
    sum_steps: int | None = None,
) -> dict[str, float]:
    """Mean loss and metrics over `steps` (or over `sum_steps`, the steps the sums cover when they were read
    earlier), and the throughput (summed over processes) of `elapsed` seconds."""
    steps = max(steps, 1)
    per = max(sum_steps if sum_steps is not None else steps, 1)
    values = {key: float(value) / per for key, value in sums.items()}  # device tensors: one sync per epoch
    images = batch * steps * processes
    elapsed = max(elapsed, 1e-9)
    values.update(
        images_per_s=images / elapsed,
        views_per_s=images * views_per_image / elapsed,
        pairs_per_s=pairs_per_step * steps * processes / elapsed if pairs_per_step else None,  # type: ignore[arg-type]
        data_wait=wait / elapsed,
        memory_mb=memory_mb(device),
    )
    return {k: v for k, v in values.items() if v is not None}


def reduce_across_ranks(accelerator: Accelerator, metrics: dict[str, float]) -> dict[str, float]:
    """Losses and accuracies averaged over ranks; throughput was already scaled by the process count.

    Per-rank views/s are kept as `views_per_s_rank<N>` so a slow rank shows.
    """
    if accelerator.num_processes == 1:
        return metrics
    keys = sorted(metrics)
    local = torch.tensor([metrics[k] for k in keys], device=accelerator.device, dtype=torch.float64)
    gathered = accelerator.gather(local[None]).reshape(accelerator.num_processes, len(keys)).cpu()
    reduced = dict(zip(keys, gathered.mean(0).tolist(), strict=True))
    views = keys.index("views_per_s")
    for rank in range(accelerator.num_processes):
        reduced[f"views_per_s_rank{rank}"] = float(gathered[rank, views]) / accelerator.num_processes
    reduced["memory_mb"] = float(gathered[:, keys.index("memory_mb")].max())
    return reduced


def weights_in_sync(accelerator: Accelerator, method: torch.nn.Module) -> bool:
    """Whether every rank ends with bit-identical weights (DDP keeps them so; a mismatch means a bug)."""
    if accelerator.num_processes == 1:
        return True
    flat = torch.cat([p.detach().double().flatten() for p in method.parameters()])
    fingerprint = torch.stack(
        [flat.sum(), (flat * torch.arange(len(flat), dtype=flat.dtype, device=flat.device)).sum()]
    )
    gathered = accelerator.gather(fingerprint[None]).reshape(accelerator.num_processes, 2)
    return bool((gathered == gathered[0]).all())


def trim_metrics(run_dir: Path, step: int) -> None:
    """Before a run (re)starts at `step`: drop a half-written last line of metrics.jsonl and the records of
    steps after the checkpoint resumed from (a kill between a record and its checkpoint), which the resumed
    run writes again; a fresh run (step 0) keeps none."""

    def before(line: str) -> bool:
        try:
            return int(json.loads(line).get("step", 0)) <= step
        except (ValueError, TypeError, AttributeError):
            return False

    keep_lines(run_dir / METRICS_FILE, before)


def elapsed_so_far(run_dir: Path) -> float:
    """Pretraining seconds recorded before a resume (the last `elapsed_s` of metrics.jsonl), so time keeps adding up."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return 0.0
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    try:  # a half-written last line (a killed run, trimmed by the main process) counts as nothing
        return float(json.loads(lines[-1]).get("elapsed_s", 0.0)) if lines else 0.0
    except (ValueError, TypeError, AttributeError):
        return 0.0


def total_steps(config: RunConfig, steps_per_epoch: int) -> int:
    """Optimizer steps of the whole configured run (`--max-steps` caps it)."""
    total = config.epochs * steps_per_epoch
    return min(total, config.max_steps) if config.max_steps else total


def projected_run_s(elapsed_s: float, steps_done: int, run_steps: int) -> float | None:
    """Seconds of pretraining the whole run (`run_steps` steps: `total_steps`, or a time budget's plan) takes at
    the pace of its steps so far (`elapsed_s` over `steps_done`, resumed calls included): what users plan by,
    and for a finished run, its own time."""
    if steps_done <= 0 or elapsed_s <= 0:
        return None
    return elapsed_s * run_steps / steps_done


def slowest(accelerator: Accelerator, seconds: float) -> float:
    """The largest of every rank's `seconds` (the same value on every rank)."""
    if accelerator.num_processes == 1:
        return seconds
    local = torch.tensor([seconds], device=accelerator.device, dtype=torch.float64)
    return float(accelerator.gather(local).max())


def hours(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"
