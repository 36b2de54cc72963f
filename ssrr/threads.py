"""Thread plans: how a CPU run shares its cores between torch's step and DALI's pipeline.

On a small CPU the two compete for the same cores, and the best split is the machine's, not ours to guess: on a
2-core Intel Xeon with AMX, a bf16 GEMM runs faster on one thread than on two (1,081 against 846 GFLOP/s), so one
torch thread beside one DALI thread beat the defaults (two and two) by 17% end to end; a CPU without AMX can
prefer the opposite. So a run times a small grid of plans on its own pipeline and step (ssrr.train.threads) and
keeps the fastest, cached per machine and workload here, so that the next run of the same kind starts at once.

This module is pure: the plans, the grid, the choice, the cache. Timing them is the trainer's.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ssrr.files import write_text_atomic
from ssrr.hardware import cores, cpu_flags, cpu_model

CACHE_FILE = "thread-plans.json"


@dataclass(frozen=True)
class ThreadPlan:
    """torch's intra-op threads, DALI's CPU threads, and whether the two are pinned to disjoint cores (the
    pipeline's on the last `dali_threads` cores, the step's on the others)."""

    torch_threads: int
    dali_threads: int
    pinned: bool = False

    def label(self) -> str:
        return f"torch {self.torch_threads} + DALI {self.dali_threads}" + (", pinned apart" if self.pinned else "")

    def pipeline_cpus(self, available: Iterable[int]) -> set[int] | None:
        """The cores the pipeline's threads may use under this plan (None: any)."""
        cpus = sorted(available)
        if not self.pinned or self.dali_threads >= len(cpus):
            return None
        return set(cpus[-self.dali_threads :])

    def step_cpus(self, available: Iterable[int]) -> set[int] | None:
        """The cores the step's threads may use under this plan: the others (None: any)."""
        cpus = set(available)
        pipeline = self.pipeline_cpus(cpus)
        return None if pipeline is None else cpus - pipeline


def default_plan(cpus: int) -> ThreadPlan:
    """What a run uses when it does not time plans (short runs, tests): torch's and DALI's own defaults."""
    return ThreadPlan(torch_threads=cpus, dali_threads=max(1, min(8, cpus)))


def candidate_plans(cpus: int, torch_threads: int | None = None, dali_threads: int | None = None) -> list[ThreadPlan]:
    """The grid a run times: torch and DALI each on one core or on all of them (an option typed by the user
    fixes its side), and the disjoint split pinned apart where it fits. The default plan comes first."""
    if cpus < 1:
        raise ValueError(f"cpus must be positive, got {cpus}")
    torch_options = [torch_threads] if torch_threads else sorted({cpus, 1}, reverse=True)
    dali_options = [dali_threads] if dali_threads else sorted({min(8, cpus), 1}, reverse=True)
    plans = [ThreadPlan(t, d) for t in torch_options for d in dali_options]
    plans += [
        ThreadPlan(p.torch_threads, p.dali_threads, pinned=True)
        for p in plans
        if p.torch_threads + p.dali_threads <= cpus
    ]
    return list(dict.fromkeys(plans))  # in order, without repeats


def fastest(timings: dict[ThreadPlan, float], tolerance: float = 0.03) -> ThreadPlan:
    """The plan with the shortest step; a plan within `tolerance` of the first (default) one does not replace it
    (a noise-sized win is no reason to leave the defaults)."""
    if not timings:
        raise ValueError("no timings to choose from")
    plans = list(timings)
    best = min(plans, key=lambda plan: timings[plan])
    first = plans[0]
    return first if timings[first] <= timings[best] * (1 + tolerance) else best


def machine_key() -> str:
    """This machine as the cache sees it: the CPU's model, its flags and the cores this process may use."""
    flags = " ".join(sorted(cpu_flags()))
    digest = hashlib.sha256(flags.encode()).hexdigest()[:12]
    return f"{cpu_model()} | flags {digest} | {cores()} cores"


def workload_key(workload: dict[str, Any]) -> str:
    """A workload (backbone, views, batch, precision, view side, ...) as a stable string."""
    return json.dumps(workload, sort_keys=True, separators=(",", ":"))


def cache_path() -> Path:
    """The plans' file in ssrr's cache (``$SSRR_CACHE``, else ``~/.cache/ssrr``, as the downloads)."""
    return Path(os.environ.get("SSRR_CACHE") or Path.home() / ".cache" / "ssrr") / CACHE_FILE


def cached_plan(workload: dict[str, Any], path: Path | None = None) -> ThreadPlan | None:
    """The plan timed earlier on this machine for this workload, if any (an unreadable cache counts as empty)."""
    path = path or cache_path()
    try:
        entry = json.loads(path.read_text()).get(machine_key(), {}).get(workload_key(workload))
        return ThreadPlan(**entry["plan"]) if entry else None
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def remember_plan(
    workload: dict[str, Any], plan: ThreadPlan, timings: dict[ThreadPlan, float], path: Path | None = None
) -> None:
    """Add this machine's plan for `workload` to the cache (written atomically; other entries kept)."""
    path = path or cache_path()
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
        if not isinstance(data, dict):
            data = {}
    except (OSError, ValueError):
        data = {}
    entry = {"plan": asdict(plan), "step_s": {p.label(): round(s, 5) for p, s in timings.items()}}
    data.setdefault(machine_key(), {})[workload_key(workload)] = entry
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True) + "\n")
    except OSError:
        pass  # a read-only home: the run goes on, the next one times again
