"""The first stage of a pretraining run: check the config and the data before anything is written, then build
the method, the optimizer and this rank's loader on the run's device and precision, restoring the training
state when resuming. Everything the later stages (ssrr.train.loop) read is one `Training`."""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, set_seed

from ssrr.config import RunConfig
from ssrr.data.formats import Manifest, load_manifest
from ssrr.data.remote import resolve_dataset_any
from ssrr.devices import choose_device
from ssrr.errors import SsrrError
from ssrr.hardware import tune_cpu_allocator
from ssrr.launch import adopt_slurm, machine_index
from ssrr.methods.base import Method, method_class, with_method_defaults
from ssrr.models.backbones import build_backbone
from ssrr.pipelines.loader import ViewLoader
from ssrr.precision import Execution
from ssrr.precision import resolve as resolve_execution
from ssrr.threads import ThreadPlan
from ssrr.train import checkpoint as ckpt
from ssrr.train import records
from ssrr.train.budget import TimeBudget
from ssrr.train.progress import console
from ssrr.train.records import METRICS_FILE
from ssrr.train.teardown import LoaderRegistry, end_processes, group_owner
from ssrr.train.threads import PlanChoice, applied, choose_plan, worth_timing

# How long a rank waits in a collective before the run fails: long enough for rank 0's probes (a linear
# protocol on a large dataset) and checkpoints, which the other ranks wait out (docs/distributed.md).
PROCESS_GROUP_TIMEOUT = timedelta(hours=2)


def _prepare_run_dir(config: RunConfig, resume: bool) -> Path | None:
    """Validate the run folder against --resume; return the checkpoint to resume from (or None)."""
    run_dir = config.run_dir
    checkpoints = ckpt.list_checkpoints(run_dir)
    if resume:
        if not checkpoints:
            return None  # nothing saved yet: --resume starts the run
        saved = RunConfig.load(run_dir)
        mismatch = saved.model_mismatch(config)
        if mismatch:
            raise SsrrError(f"{run_dir}: checkpoint of another model ({'; '.join(mismatch)})")
        return checkpoints[-1]
    if checkpoints or (run_dir / METRICS_FILE).exists():
        raise SsrrError(f"{run_dir} already exists: pass --resume to continue it, or choose another --name")
    return None


@dataclass
class Training:
    """What a run is set up with (the first stage), read by every stage after it."""

    config: RunConfig
    shard_dir: Path
    manifest: Manifest
    num_classes: int
    accelerator: Accelerator
    execution: Execution
    model: torch.nn.Module  # as prepared by accelerate (DDP-wrapped with several processes)
    method: Method  # the same, unwrapped
    optimizer: Any
    scheduler: Any
    scaler: torch.amp.GradScaler | None
    loader: ViewLoader
    make_loader: Callable[..., ViewLoader]
    state: dict[str, Any]  # the training state resumed from ({} for a fresh run)
    budget: TimeBudget | None  # --time-budget's plan of the run's steps (None: its epochs decide)
    threads: PlanChoice  # how the step and the pipeline share the CPU (ssrr/threads.py)
    resumed: bool
    views_per_image: int
    pairs_per_step: int
    num_machines: int = 1

    @property
    def main(self) -> bool:
        return bool(self.accelerator.is_main_process)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def steps_per_epoch(self) -> int:
        return len(self.loader)


def set_up(config: RunConfig, resume: bool, show: bool, closing: ExitStack) -> Training:
    """Check the config and the data (before anything is written), then build the model, the optimizer and the
    loader on the run's device and precision, restoring the training state when resuming.

    What has to be undone at the end of the run is registered on `closing` as it is built (the process group,
    then the loaders; see ssrr.train.teardown), so a failure halfway through set-up undoes it as well."""
    config = with_method_defaults(config.resolved().validate()).validate()
    device = choose_device(config.device)  # `--device cuda` without a usable GPU: refused before anything is written
    shard_dir = resolve_dataset_any(config.dataset, config.shards_root, show=show)  # a URL is fetched and cached
    manifest = load_manifest(shard_dir)
    cls = method_class(config.method)
    num_classes = _num_classes(config, manifest, cls.uses_labels, shard_dir)
    train_samples = manifest.samples_in(config.split)
    cls.check_data(config, train_samples, num_classes)  # before anything is written
    resume_from = _prepare_run_dir(config, resume)  # read-only: every rank decides the same
    adopt_slurm()  # an srun task (one per rank) becomes a rank accelerate recognises
    owns_group = group_owner()
    accelerator = Accelerator(
        cpu=device.type == "cpu",
        mixed_precision="no",  # autocast and loss scaling are the Execution's (one path on every device)
        gradient_accumulation_steps=config.grad_accum,
        log_with=config.log_with or None,
        project_dir=str(config.run_dir),
        kwargs_handlers=[InitProcessGroupKwargs(timeout=PROCESS_GROUP_TIMEOUT)],
    )
    closing.push(end_processes(accelerator, owns_group))
    machines = count_machines(accelerator)
    execution = resolve_execution(config.precision, accelerator.device, channels_last=config.channels_last)
    if accelerator.device.type == "cpu":
        tune_cpu_allocator()
    if accelerator.is_main_process and show and execution.describe() != execution.precision:
        console.print(f"precision: {execution.describe()}")
    method = _build_method(config, cls, num_classes, accelerator, execution)
    seed_rank(config.seed, accelerator.process_index)
    state: dict[str, Any] = {}
    if resume_from is not None:
        ckpt.load_method_weights(method, resume_from)
        state = ckpt.load_training_state(resume_from)
    optimizer = method.build_optimizer()
    loaders = LoaderRegistry()
    closing.callback(loaders.close_all)  # before the process group goes (last in, first out)
    recipe = cls.recipe(config, manifest.image_size)
    threads = _thread_plan(config, method, execution, accelerator, manifest, state, loaders, shard_dir, recipe)
    if accelerator.is_main_process and show and threads.source == "measured":
        timed = f"the fastest of {len(threads.step_s)}, timed in {threads.seconds:.0f} s"
        console.print(f"thread plan: {threads.plan.label()} ({timed})")
    pipeline_cpus = threads.plan.pipeline_cpus(os.sched_getaffinity(0))  # before the step's cores narrow
    closing.enter_context(applied(threads.plan))  # torch's threads and the step's cores, for the whole run
    if config.compile:  # after the plan: inductor's CPU kernels keep the thread count they were compiled with
        # In place (Module.compile), not torch.compile(module): a wrapper would prefix every parameter's name
        # with `_orig_mod.`, and the saved backbone would not load into an uncompiled one for evaluation.
        method.backbone.compile()
    make_loader = _loader_factory(config, shard_dir, accelerator, execution, loaders, threads.plan, pipeline_cpus)
    loader = make_loader(recipe)
    if loader.skipped and accelerator.is_main_process:  # said even with --quiet, and recorded in the run
        console.print(f"--skip-corrupt: skipping {loader.skipped} corrupt samples of {shard_dir}", highlight=False)
    if len(loader) == 0:
        raise SsrrError(
            f"{shard_dir}: the {config.split} split has too few samples for one batch of {config.batch} per process"
        )
    budget = _time_budget(config, len(loader), state, spent_s=threads.seconds)
    scheduler = method.build_scheduler(optimizer, len(loader), budget.total if budget else None)
    model, optimizer = accelerator.prepare(method, optimizer)
    scaler = execution.grad_scaler()
    _restore(state, optimizer, scheduler, scaler, accelerator.process_index)
    unwrapped: Method = accelerator.unwrap_model(model)
    return Training(
        config, shard_dir, manifest, num_classes, accelerator, execution, model, unwrapped, optimizer, scheduler,
        scaler, loader, make_loader, state, budget, threads, resume_from is not None, cls.views_per_image(config),
        unwrapped.pairs_per_step(config.batch_size), machines,
    )  # fmt: skip


def _time_budget(
    config: RunConfig, steps_per_epoch: int, state: dict[str, Any], spent_s: float = 0.0
) -> TimeBudget | None:
    """The plan of a run with `--time-budget`: capped by its epochs and --max-steps; resumed, the saved plan.
    `spent_s` of the budget went to set-up work that trains nothing (timing thread plans)."""
    if not config.time_budget_s:
        return None
    cap = config.epochs * steps_per_epoch
    if config.max_steps:
        cap = min(cap, config.max_steps)
    seconds = max(0.1 * config.time_budget_s, config.time_budget_s - spent_s)
    return TimeBudget.for_run(seconds, steps_per_epoch, cap, state.get("budget"))


def _thread_plan(
    config: RunConfig,
    method: Method,
    execution: Execution,
    accelerator: Accelerator,
    manifest: Manifest,
    state: dict[str, Any],
    loaders: LoaderRegistry,
    shard_dir: Path,
    recipe: Any,
) -> PlanChoice:
    """The run's thread plan (ssrr/train/threads.py): resumed, typed, cached, timed here, or the default."""
    first_side, _ = config.view_sides(min(manifest.image_size))
    per_epoch = manifest.samples_in(config.split) // max(1, config.batch_size * accelerator.num_processes)
    planned = records.total_steps(config, per_epoch)
    timing = worth_timing(config, method, accelerator.device, accelerator.num_processes, planned)

    def loader_for(plan: ThreadPlan) -> ViewLoader:  # the run's own loader, under `plan`
        cpus = plan.pipeline_cpus(os.sched_getaffinity(0))
        loader = _loader_factory(config, shard_dir, accelerator, execution, loaders, plan, cpus)(recipe)
        loader.set_image_size(first_side)
        return loader

    return choose_plan(
        config, method, execution, loader_for, view_side=first_side, timing=timing, saved=state.get("thread_plan")
    )


def _build_method(
    config: RunConfig, cls: type[Method], num_classes: int, accelerator: Accelerator, execution: Execution
) -> Method:
    """The method around a freshly seeded backbone, on the device and in the memory format of the run."""
    set_seed(config.seed)
    backbone = build_backbone(config.backbone, config.stem)
    method: Method = cls(config, backbone, num_classes)
    if config.sync_bn and accelerator.num_processes > 1:
        method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
    return execution.prepare(method)


def _loader_factory(
    config: RunConfig,
    shard_dir: Path,
    accelerator: Accelerator,
    execution: Execution,
    loaders: LoaderRegistry,
    threads: ThreadPlan,
    pipeline_cpus: set[int] | None,
) -> Callable[..., ViewLoader]:
    """make_loader(recipe, split=..., training=...): this rank's views of the shards (DeepCluster makes more),
    each registered so that the run's end closes it if its user has not."""

    def make_loader(recipe: Any, *, split: str = config.split, training: bool = True) -> ViewLoader:
        return loaders.add(
            ViewLoader(
                shard_dir,
                recipe,
                split=split,
                batch_size=config.batch,
                device=accelerator.device,
                rank=accelerator.process_index,
                world_size=accelerator.num_processes,
                seed=config.seed,
                dtype=execution.view_dtype,
                training=training,
                num_threads=threads.dali_threads,
                pipeline_cpus=pipeline_cpus,
                skip_corrupt=config.skip_corrupt,
            )
        )

    return make_loader


def _restore(
    state: dict[str, Any], optimizer: Any, scheduler: Any, scaler: torch.amp.GradScaler | None, rank: int
) -> None:
    """Resuming: the optimizer's moments, the schedule, the loss scale and this rank's RNGs as they were saved."""
    if not state:
        return
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler"):
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    ckpt.set_rng_state(ckpt.rng_of_rank(state, rank))


def seed_rank(seed: int, rank: int) -> None:
    """Give each rank after the first its own python, numpy and torch streams (derived from seed and rank), so
    the ranks' random draws (Deep InfoMax's prior samples, dropout) are independent, as one process's are
    across its batch; rank 0, and so a one-process run, keeps the stream `--seed` gives. Every rank's state
    is checkpointed (`rng-rank<r>`), so a resume continues each stream."""
    if rank == 0:
        return
    derived = int(np.random.SeedSequence([seed, rank, 0x52414E4B]).generate_state(1, np.uint32)[0])
    set_seed(derived)


def count_machines(accelerator: Accelerator) -> int:
    """Machines the run's processes are on: distinct machine ranks as the launcher numbered them."""
    if accelerator.num_processes == 1:
        return 1
    mine = torch.tensor([[machine_index()]], device=accelerator.device)
    return len(set(accelerator.gather(mine).flatten().tolist()))


def _num_classes(config: RunConfig, manifest: Manifest, uses_labels: bool, shard_dir: Path) -> int:
    """Classes of the labels a method trains on (supervised), or of the dataset (DeepCluster's k)."""
    splits = [manifest.splits[name] for name in config.split.split("+") if name in manifest.splits]
    if uses_labels and not all(split.labeled for split in splits):  # an unknown split: the loader's error
        raise SsrrError(f"{shard_dir}: split {config.split} is not all labelled; --method {config.method} needs labels")
    if config.method_options.get("labels") == "coarse":  # supervised's option (ssrr/methods/supervised.py)
        if not manifest.coarse_classes:
            raise SsrrError(f"{shard_dir}: no coarse labels (only CIFAR-100 has them); drop --labels coarse")
        return len(manifest.coarse_classes)
    return max(manifest.num_classes, 1)
