"""The run's thread plan (ssrr.threads): timed on its own pipeline and step, or taken from the cache.

A fresh CPU run long enough to repay it (`MIN_STEPS` planned steps or a `MIN_BUDGET_S` time budget) times each
plan of the grid for a few steps: a loader with the plan's DALI threads (pinned or not), the step on the plan's
torch threads, the first steps left out as warm-up. The steps train the run's own model, so its weights,
BatchNorm statistics and random streams are put back afterwards: the run then starts as if nothing had been
timed. The fastest plan is kept for the run and cached for this machine and workload. Short runs (and tests),
several processes, GPU runs and methods with an epoch hook (DeepCluster clusters first) keep the defaults;
`--threads` / `--num-threads` fix their side of the grid, both of them the whole plan. A resumed run keeps its
plan (saved with the checkpoint).
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ssrr.config import RunConfig
from ssrr.hardware import cores
from ssrr.methods.base import Method
from ssrr.pipelines.batch import Batch
from ssrr.pipelines.loader import ViewLoader
from ssrr.precision import Execution, optimizer_step
from ssrr.threads import ThreadPlan, cached_plan, candidate_plans, default_plan, fastest, remember_plan
from ssrr.train import checkpoint as ckpt

MIN_STEPS = 300  # a run shorter than this keeps the default plan (timing would cost more than it saves)
MIN_BUDGET_S = 300.0
WARMUP_STEPS = 2  # the pipeline's start and the step's first allocations
TIMED_STEPS = 8
MIN_TIMED_STEPS = 2
ENOUGH_S = 4.0  # timed seconds after which a plan's figure is taken as it stands
SLOWER_THAN_BEST = 1.5  # a plan whose steps have taken this many times the best plan's stops being timed


@dataclass
class PlanChoice:
    """The plan a run uses and where it came from: measured, cached, typed, resumed or default."""

    plan: ThreadPlan
    source: str
    step_s: dict[str, float] = field(default_factory=dict)  # plan label -> seconds a step (measured only)
    seconds: float = 0.0  # spent timing

    def record(self) -> dict[str, Any]:
        """What environment.json, throughput.json and the checkpoint keep."""
        return {**asdict(self.plan), "source": self.source, "step_s": self.step_s, "timing_s": round(self.seconds, 2)}

    def describe(self) -> str:
        return f"{self.plan.label()} ({self.source})"


def step_function(method: Method, execution: Execution) -> Callable[[Batch], None]:
    """A method's training step as `ssrr pretrain` takes it (forward under the precision, scaled backward,
    its optimizer), on an optimizer of its own."""
    optimizer = method.build_optimizer()
    scaler = execution.grad_scaler()

    def step(batch: Batch) -> None:
        optimizer.zero_grad(set_to_none=True)
        with execution.autocast():
            loss = method(batch).loss
        optimizer_step(loss, optimizer, scaler)
        if execution.device.type == "cuda":
            torch.cuda.synchronize(execution.device)

    return step


def workload(config: RunConfig, execution: Execution, view_side: int) -> dict[str, Any]:
    """What decides the best plan besides the machine: the step's size and kind."""
    return {
        "method": config.method, "backbone": config.backbone, "stem": config.stem, "k": config.k,
        "batch": config.batch, "precision": execution.describe(), "channels_last": config.channels_last,
        "compile": config.compile, "view_side": view_side,
    }  # fmt: skip


def typed_plan(config: RunConfig) -> ThreadPlan | None:
    """The whole plan when both sides are typed (`--threads`, `--num-threads`), else None."""
    if config.threads and config.num_threads:
        return ThreadPlan(config.threads, config.num_threads)
    return None


def worth_timing(config: RunConfig, method: Method, device: torch.device, processes: int, planned: int) -> bool:
    """Whether this run times plans: a CPU run of one process, long enough, without an epoch hook."""
    long_enough = config.time_budget_s >= MIN_BUDGET_S if config.time_budget_s else planned >= MIN_STEPS
    plain = type(method).on_epoch_start is Method.on_epoch_start
    return device.type == "cpu" and processes == 1 and long_enough and plain and cores() > 1


def choose_plan(
    config: RunConfig,
    method: Method,
    execution: Execution,
    loader_for: Callable[[ThreadPlan], ViewLoader],
    *,
    view_side: int,
    timing: bool,
    saved: dict[str, Any] | None = None,
) -> PlanChoice:
    """The run's plan: resumed, typed, cached for this workload, measured (when `timing`), or the default."""
    cpus = cores()
    if saved:
        return PlanChoice(ThreadPlan(saved["torch_threads"], saved["dali_threads"], saved["pinned"]), "resumed")
    typed = typed_plan(config)
    if typed is not None:
        return PlanChoice(typed, "typed")
    if not timing:
        base = default_plan(cpus)
        torch_threads = config.threads or torch.get_num_threads()  # OMP_NUM_THREADS, where set
        return PlanChoice(ThreadPlan(torch_threads, config.num_threads or base.dali_threads), "default")
    key = workload(config, execution, view_side)
    cached = cached_plan(key)
    if cached is not None and _fits(cached, config):
        return PlanChoice(cached, "cached")
    started = time.perf_counter()
    timings: dict[ThreadPlan, float] = {}
    with _restored(method):
        step = step_function(method, execution)
        for plan in candidate_plans(cpus, config.threads, config.num_threads):
            limit = SLOWER_THAN_BEST * min(timings.values()) * TIMED_STEPS if timings else None
            timings[plan] = _time_plan(plan, step, loader_for, limit)
    best = fastest(timings)
    remember_plan(key, best, timings)
    step_s = {plan.label(): round(seconds, 4) for plan, seconds in timings.items()}
    return PlanChoice(best, "measured", step_s, time.perf_counter() - started)


def _fits(plan: ThreadPlan, config: RunConfig) -> bool:
    """A cached plan agrees with what the user typed."""
    return (not config.threads or plan.torch_threads == config.threads) and (
        not config.num_threads or plan.dali_threads == config.num_threads
    )


def _time_plan(
    plan: ThreadPlan,
    step: Callable[[Batch], None],
    loader_for: Callable[[ThreadPlan], ViewLoader],
    limit_s: float | None = None,
) -> float:
    """Seconds a step under `plan`, pipeline included, after WARMUP_STEPS; a plan that has
    spent `limit_s` is clearly slower than the best so far and stops early."""
    with applied(plan), loader_for(plan) as loader:
        batches = loader.endless(1_000_000)  # epochs the run never reads
        for _ in range(WARMUP_STEPS):
            step(next(batches))
        started, done = time.perf_counter(), 0
        while _more(done, time.perf_counter() - started, limit_s):
            step(next(batches))
            done += 1
        return (time.perf_counter() - started) / done


def _more(done: int, seconds: float, limit_s: float | None) -> bool:
    """Whether to time another step: up to TIMED_STEPS, fewer once ENOUGH_S have passed (a heavy step varies
    less), none past `limit_s` (the plan is clearly slower than the best), and at least MIN_TIMED_STEPS."""
    if done < MIN_TIMED_STEPS:
        return True
    return done < TIMED_STEPS and seconds < ENOUGH_S and (limit_s is None or seconds <= limit_s)


@contextlib.contextmanager
def applied(plan: ThreadPlan) -> Iterator[None]:
    """torch's threads and this thread's cores as `plan` says, restored on leaving."""
    threads, cpus = torch.get_num_threads(), os.sched_getaffinity(0)
    torch.set_num_threads(plan.torch_threads)
    step_cpus = plan.step_cpus(cpus)
    if step_cpus:
        os.sched_setaffinity(0, step_cpus)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        os.sched_setaffinity(0, cpus)


@contextlib.contextmanager
def _restored(method: Method) -> Iterator[None]:
    """The method's weights, buffers, gradients (none) and the random streams as they were on entering."""
    weights = copy.deepcopy(method.state_dict())
    rng = ckpt.rng_state()
    try:
        yield
    finally:
        method.load_state_dict(weights)
        method.zero_grad(set_to_none=True)  # the run's first step must not add to the timing's last gradients
        ckpt.set_rng_state(rng)
