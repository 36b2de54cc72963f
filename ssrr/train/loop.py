"""The pretraining loop on accelerate: one CPU, one GPU, or many processes (`accelerate launch`).

Precision: `--precision` (or `--amp`, meaning `auto`) resolves to one `ssrr.precision.Execution` that runs every
forward pass of the run (training step, DeepCluster's clustering pass, the k-NN probe); fp16 adds loss scaling.
accelerate runs with mixed_precision="no": the precision is ours, so CPU and GPU take one code path. BatchNorm:
local per process by default (each rank normalises its own M images, as the paper's single-GPU setting does per
batch); `--sync-bn` synchronises statistics. Data: each rank reads its own slice of the shards (see
`ssrr.pipelines.loader.ViewLoader`); every rank takes the same number of steps per epoch. Checkpoints and logs are
written by the main process only.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from ssrr import ranks
from ssrr.config import RunConfig
from ssrr.errors import Interrupted
from ssrr.files import append_line, open_log, write_text_atomic
from ssrr.methods.base import EpochContext
from ssrr.models.batchnorm import recalibrate_batchnorm
from ssrr.pipelines import recipes
from ssrr.precision import Execution
from ssrr.schedules import view_side
from ssrr.train import checkpoint as ckpt
from ssrr.train import probing, records
from ssrr.train.progress import TrainDisplay, console, summary_table
from ssrr.train.records import ENVIRONMENT_FILE, METRICS_FILE, THROUGHPUT_FILE
from ssrr.train.setup import Training, set_up
from ssrr.train.state import EpochTally, Probe, Progress, RunResult
from ssrr.train.teardown import interrupt_deferred

__all__ = ["ENVIRONMENT_FILE", "METRICS_FILE", "THROUGHPUT_FILE", "Probe", "RunResult", "pretrain"]


@contextmanager
def _removed_on_failure(run_dir: Path, owned: bool) -> Iterator[None]:
    """A run folder this call created is removed again if the run fails before its first checkpoint, so a
    failed start leaves nothing behind; once a checkpoint exists the folder stays (it can be resumed)."""
    try:
        yield
    except BaseException:
        if owned and run_dir.is_dir() and not ckpt.list_checkpoints(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def pretrain(config: RunConfig, *, resume: bool = False, show: bool = True, probes: Sequence[Probe] = ()) -> RunResult:
    """Run (or resume) one pretraining run; return where it wrote and its final throughput.

    Stages: set up (`ssrr.train.setup.set_up`: data, model, resume), open the run folder (`_open_run`), epochs
    (`_run_epoch`, its steps `_run_steps` and `_train_step`), checkpoints (`_save`), the summary (`_report`).
    `probes` are handed in by the caller (the loop imports no evaluation code); `ssrr.eval.probes.probes_for`
    builds the ones `--knn-every` and `--eval-every` ask for. Whatever ends the run, its loaders and then its
    process group are closed before this returns or raises (ssrr.train.teardown); Ctrl-C raises `Interrupted`."""
    with ExitStack() as closing:
        return _train(set_up(config, resume, show, closing), show, probes)


def _train(t: Training, show: bool, probes: Sequence[Probe]) -> RunResult:
    """The run once set up: its folder, the epochs, the summary."""
    config = t.config
    fresh = not config.run_dir.exists()
    progress = Progress(
        epoch=int(t.state.get("epoch", 0)),
        skip=int(t.state.get("batch_in_epoch", 0)),
        step=int(t.state.get("step", 0)),
        started=0.0,
        elapsed_before=0.0,
    )
    progress.first_step = progress.step
    try:
        with _removed_on_failure(config.run_dir, fresh and t.main):
            _open_run(t)
            display = TrainDisplay(show and t.main, _epochs(t))
            progress.started = time.perf_counter()
            progress.elapsed_before = records.elapsed_so_far(config.run_dir) if t.resumed else 0.0
            with _sample_log(t) as sample_log, display, interrupt_deferred(progress.interrupt):
                while not progress.finished(config, t.budget):
                    _run_epoch(t, progress, display, probes, sample_log)
                    if progress.interrupted:
                        break
            if not (progress.interrupted and t.accelerator.num_processes > 1):
                _report(t, progress, show)
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside the steps: nothing saved at this moment
        raise Interrupted(_interrupted_line(config.run_dir, progress.step, saved_now=False)) from None
    if progress.interrupted:
        raise Interrupted(_interrupted_line(config.run_dir, progress.step, saved_now=progress.saved_at_stop))
    return RunResult(config.run_dir, progress.epoch, progress.step, progress.throughput)


@contextmanager
def _sample_log(t: Training) -> Iterator[Any]:
    """`--log-samples`: this rank's samples-rank<N>.jsonl, open for the run (None without the option)."""
    if not t.config.log_samples:
        yield None
        return
    t.config.run_dir.mkdir(parents=True, exist_ok=True)
    log = open_log(t.config.run_dir / f"samples-rank{t.accelerator.process_index}.jsonl")
    try:
        yield log
    finally:
        log.close()


def _interrupted_line(run_dir: Path, step: int, saved_now: bool) -> str:
    """The one line of a Ctrl-C: where the run stopped and the checkpoint to resume from."""
    saved = ckpt.list_checkpoints(run_dir)
    if not saved:
        return f"interrupted at step {step}; no checkpoint yet, nothing kept: run the same command to start again"
    last = saved[-1]
    kept = "saved" if saved_now else "is intact"
    return f"interrupted at step {step}; checkpoint {last.name} {kept} in {run_dir}: resume with --resume"


def _open_run(t: Training) -> None:
    """The run folder (main process): config, environment, metrics trimmed to the checkpoint; the trackers."""
    run_dir = t.config.run_dir
    if t.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        t.config.save(run_dir)
        env = records.environment(t.accelerator, t.config, t.execution, t.manifest.image_size, t.num_machines)
        env["thread_plan"] = t.threads.record()
        write_text_atomic(run_dir / ENVIRONMENT_FILE, json.dumps(env, indent=2) + "\n")
        records.trim_metrics(run_dir, int(t.state.get("step", 0)))
    if t.config.log_with:
        t.accelerator.init_trackers(t.config.name, config={k: str(v) for k, v in asdict(t.config).items()})


def _epochs(t: Training) -> int:
    """The run's epochs: its --epochs, or as many as its time budget's plan touches."""
    return t.budget.epochs if t.budget is not None else t.config.epochs


def _ends_run(t: Training, progress: Progress, epoch_done: bool) -> bool:
    """Whether the epoch just trained ends the run (its last epoch, the time budget's last step, or --max-steps:
    the probes then score the final backbone)."""
    budget_ended = t.budget is not None and t.budget.ended(progress.step)
    max_steps = bool(t.config.max_steps and progress.step >= t.config.max_steps)
    return (epoch_done and progress.epoch + 1 >= _epochs(t)) or budget_ended or max_steps


def _plan_budget(t: Training, progress: Progress, display: TrainDisplay, epoch_end: bool) -> None:
    """--time-budget: plan the run's steps from its pace so far, when due (the same step on every rank, and the
    slowest rank's time, so every rank plans alike)."""
    budget = t.budget
    if budget is None or not budget.due(progress.step - progress.first_step, progress.step, epoch_end):
        return
    elapsed = records.slowest(t.accelerator, progress.pretraining_s())
    if t.config.bn_recalibrate:  # one forward pass over the clean images: about half an epoch's step time per view
        budget.end_reserve_s = elapsed / max(progress.step, 1) * t.steps_per_epoch / (2 * t.views_per_image)
    budget.plan(elapsed, progress.step)
    display.total_epochs, display.plan = budget.epochs, f" (budget {budget.describe()})"


def _view_size(t: Training, epoch: int) -> tuple[int, int]:
    """This epoch's (H, W) of the training views: the images' own, or the progressive-resizing side."""
    if not (t.config.view_size or t.config.view_size_end):
        return tuple(t.manifest.image_size)  # type: ignore[return-value]
    first, last = t.config.view_sides(min(t.manifest.image_size))
    side = view_side(epoch, _epochs(t), first, last)
    return side, side


def _run_epoch(
    t: Training, progress: Progress, display: TrainDisplay, probes: Sequence[Probe], sample_log: Any
) -> None:
    """One epoch (or what is left of it): the method's epoch hook, the steps, the record, the probes, a
    checkpoint when due. Ctrl-C ends the epoch at a step boundary with its progress saved; with several
    processes nothing is saved then (ranks stop at different steps), and the last checkpoint stays as it was."""
    config, epoch = t.config, progress.epoch
    t.method.on_epoch_start(
        EpochContext(
            epoch, t.make_loader, t.execution, t.num_classes, t.manifest.image_size, t.manifest.mean, t.manifest.std
        )
    )
    marks = t.method.epoch_marks()
    marks_per_rank = ranks.gather_objects(marks) if marks else []  # the same keys on every rank: one collective
    t.model.train()
    display.start_epoch(epoch, t.steps_per_epoch)
    tally = EpochTally(t.device)
    view_size = _view_size(t, epoch)
    t.loader.set_image_size(view_size)
    batches = iter(t.loader.epoch(epoch))
    several = t.accelerator.num_processes > 1
    try:
        for _ in range(progress.skip):  # resuming mid-epoch: the epoch's order is a function of (seed, epoch)
            next(batches)
            tally.batch_in_epoch += 1
        progress.skip = 0
        prepare = lambda: _prepare_next_epoch(t, epoch)  # noqa: E731
        _run_steps(t, progress, tally, batches, display, sample_log, prepare, probes)
    except Exception:
        if not (progress.interrupted and several):
            raise  # else a peer stopped first on the same Ctrl-C and left this rank's collective: the stop
    if progress.interrupted and several:
        return
    epoch_done = tally.batch_in_epoch >= t.steps_per_epoch
    if not progress.interrupted:
        _plan_budget(t, progress, display, epoch_end=True)
    ends_run = not progress.interrupted and _ends_run(t, progress, epoch_done)
    if ends_run and config.bn_recalibrate:
        _recalibrate_batchnorm(t)
    metrics = records.reduce_across_ranks(t.accelerator, _rates(t, tally, time.perf_counter() - tally.started))
    next_epoch, next_batch = (epoch + 1, 0) if epoch_done else (epoch, tally.batch_in_epoch)
    record: dict[str, Any] = {"epoch": epoch + 1, "step": progress.step, "complete": epoch_done, **metrics}
    record["skipped"] = t.loader.skipped  # corrupt samples left out (--skip-corrupt)
    record["lr"] = t.optimizer.param_groups[0]["lr"]  # at the end of the epoch (schedules: ssrr/schedules.py)
    record["view_size"] = view_size[0]  # the side of this epoch's training views (progressive resizing)
    record.update({key: [mark[key] for mark in marks_per_rank] for key in marks})  # one value per rank
    due = probing.due_probes(probes, epoch + 1, ends_run, progress.step) if (epoch_done or ends_run) else []
    record.update(probing.run_probes(t, progress, due))
    progress.elapsed_s = progress.pretraining_s()
    record["elapsed_s"] = round(progress.elapsed_s, 3)
    if t.main:
        append_line(config.run_dir / METRICS_FILE, json.dumps(record))  # appended: resuming keeps history
        if config.log_with:
            numbers = {k: v for k, v in record.items() if isinstance(v, (int, float))}
            t.accelerator.log(numbers, step=progress.step)
    display.end_epoch(epoch, metrics)
    progress.throughput = metrics
    stop_now = progress.interrupted or ends_run or bool(config.max_steps and progress.step >= config.max_steps)
    if (next_epoch % config.checkpoint_every == 0) or next_epoch >= _epochs(t) or stop_now or not epoch_done:
        _save(t, progress.step, next_epoch, next_batch)
        progress.saved_at_stop = progress.interrupted
    progress.epoch = next_epoch


def _recalibrate_batchnorm(t: Training) -> None:
    """`--bn-recalibrate`, after the last epoch (pretraining time): the backbone's BatchNorm statistics
    recomputed on the clean training images at their own size, the inputs every evaluation gives it."""
    with t.make_loader(recipes.evaluation(), training=False) as loader:
        batches = (t.execution.inputs(batch.views).float() for batch in loader.epoch(0))
        recalibrate_batchnorm(t.method.backbone, batches)


def _prepare_next_epoch(t: Training, epoch: int) -> None:
    """Start the next epoch's pipeline now, so it starts without refilling its shuffle buffer (not past the
    run's last epoch or its --max-steps)."""
    config = t.config
    if epoch + 1 >= _epochs(t) or (config.max_steps and (epoch + 1) * t.steps_per_epoch >= config.max_steps):
        return
    t.loader.prepare(epoch + 1, _view_size(t, epoch + 1))


def _run_steps(
    t: Training,
    progress: Progress,
    tally: EpochTally,
    batches: Iterator[Any],
    display: TrainDisplay,
    sample_log: Any,
    after_first_step: Callable[[], None] = lambda: None,
    probes: Sequence[Probe] = (),
) -> None:
    """The steps of an epoch until its batches run out (or `--max-steps`), timing the wait for data, and the
    probes due within it (`probing.step_probes`). The live display reads the loss and metrics without waiting for the
    device (`records.LaggedSums`)."""
    config = t.config
    lagged = records.LaggedSums(t.device)
    tally.step_started = time.perf_counter()
    while True:
        tick = time.perf_counter()
        batch = next(batches, None)
        tally.wait += time.perf_counter() - tick
        if batch is None:
            break
        out = _train_step(t.accelerator, t.execution, t.model, batch, t.optimizer, t.scheduler, t.scaler)
        if sample_log is not None:
            sample_log.write(json.dumps([progress.step, batch.index.tolist()]) + "\n")
        progress.step += 1
        tally.add(out)
        if tally.counted == 1:
            after_first_step()
        if tally.batch_in_epoch < t.steps_per_epoch:  # the epoch's last step probes in its record (_run_epoch)
            probing.step_probes(t, progress, tally, probes)
        if tally.batch_in_epoch < t.steps_per_epoch:  # an epoch's end plans in _run_epoch
            _plan_budget(t, progress, display, epoch_end=False)
        if display.enabled and (tally.batch_in_epoch % 5 == 0 or tally.batch_in_epoch == t.steps_per_epoch):
            lagged.request(tally.sums, tally.counted)
            running = _rates(t, tally, time.perf_counter() - tally.step_started, *lagged.latest())
            per_step = (time.perf_counter() - tally.step_started) / tally.counted
            display.update(tally.batch_in_epoch, running, (_total_steps(t) - progress.step) * per_step)
        budget_ended = t.budget is not None and t.budget.ended(progress.step)
        if (config.max_steps and progress.step >= config.max_steps) or budget_ended or progress.interrupted:
            break


def _total_steps(t: Training) -> int:
    """The run's steps: its time budget's plan, or its epochs (capped by --max-steps)."""
    return t.budget.planned_steps if t.budget is not None else records.total_steps(t.config, t.steps_per_epoch)


def _rates(
    t: Training, tally: EpochTally, elapsed: float, sums: dict[str, float] | None = None, sum_steps: int | None = None
) -> dict[str, float]:
    """The epoch's rates; the loss and metrics from `sums` over `sum_steps` when given (read earlier, without
    a sync), else from the tally's device sums (one sync: the epoch's end)."""
    if sums is None:
        sums = tally.sums or {"loss": torch.zeros((), device=t.device)}  # type: ignore[assignment]
    return records.rates(
        sums,  # type: ignore[arg-type]
        tally.counted,
        elapsed,
        tally.wait,
        t.config.batch_size,
        t.views_per_image,
        t.pairs_per_step,
        t.accelerator.num_processes,
        t.device,
        sum_steps,
    )


def _save(t: Training, step: int, epoch_now: int, batch_now: int) -> None:
    """A checkpoint (written by the main process, every rank calling): weights, optimizer, schedule, loss scale,
    every rank's RNGs, and where to resume."""
    rng_states = ranks.gather_objects(ckpt.rng_state())  # a collective: before the non-main ranks return
    if not t.main:
        return
    training_state = {
        "optimizer": t.optimizer.state_dict(),
        "scheduler": t.scheduler.state_dict() if t.scheduler is not None else None,
        "scaler": t.scaler.state_dict() if t.scaler is not None else None,
        **ckpt.rng_entries(rng_states),
        "budget": t.budget.state() if t.budget is not None else None,  # resuming keeps the plan
        "thread_plan": t.threads.record(),  # and the thread plan
        "epoch": epoch_now,
        "batch_in_epoch": batch_now,
        "step": step,
    }
    ckpt.save_checkpoint(t.config.run_dir, t.method, t.config.backbone, training_state, step, t.config.keep_checkpoints)


def _report(t: Training, progress: Progress, show: bool) -> None:
    """The end of a call: weights in sync across ranks, throughput.json, the summary table. (The trackers and
    the process group are ended by the run's teardown, ssrr.train.teardown.)"""
    config = t.config
    in_sync = records.weights_in_sync(t.accelerator, t.method)
    t.accelerator.wait_for_everyone()
    total = time.perf_counter() - progress.started
    if not t.main:
        return
    processes = t.accelerator.num_processes
    summary = {
        **progress.throughput,
        "wall_s": total,
        "steps": progress.step,
        "epochs": progress.epoch,
        "processes": processes,
        "num_processes": processes,
        "num_machines": t.num_machines,
        "weights_in_sync": in_sync,
        **t.execution.record(),
        "projected_run_s": records.projected_run_s(progress.elapsed_s, progress.step, _total_steps(t)),
        "skipped": t.loader.skipped,
        **(t.budget.state() if t.budget is not None else {}),
        "thread_plan": t.threads.record(),
    }
    write_text_atomic(config.run_dir / THROUGHPUT_FILE, json.dumps(summary, indent=2) + "\n")
    if show:
        extra = {
            "run": str(config.run_dir),
            "method / backbone": f"{config.method} / {config.backbone}",
            "K x M": f"{t.views_per_image} x {config.batch}"
            + _global_batch(config.batch_size, processes, config.grad_accum),
            "device": f"{t.device} x{processes}" + (f" on {t.num_machines} machines" if t.num_machines > 1 else ""),
            "precision": t.execution.describe(),
            "threads": t.threads.describe() if t.device.type == "cpu" else "-",
            "epochs / steps": f"{progress.epoch} / {progress.step}",
            "wall": f"{total:.1f} s",
            "configured run": f"~{records.hours(summary['projected_run_s'])} at this run's pace",
        }
        if t.budget is not None:
            extra["time budget"] = t.budget.describe()
        console.print(summary_table("pretraining summary (last epoch)", progress.throughput, extra))


def _global_batch(batch: int, processes: int, grad_accum: int) -> str:
    """The summary's note on M: it is per process; the images of one optimizer step are M x processes x accum."""
    if processes * grad_accum == 1:
        return ""
    return f" (M per process; {batch * processes * grad_accum} images per optimizer step)"


def _train_step(
    accelerator: Accelerator,
    execution: Execution,
    model: torch.nn.Module,
    batch: Any,
    optimizer: Any,
    scheduler: Any,
    scaler: torch.amp.GradScaler | None,
) -> Any:
    """One optimizer step (or one accumulation micro-step): forward under the run's precision, backward with
    loss scaling when fp16, then the optimizer and schedule."""
    with accelerator.accumulate(model):
        with execution.autocast():
            out = model(batch)
        accelerator.backward(scaler.scale(out.loss) if scaler is not None else out.loss)
        if scaler is None:
            optimizer.step()
        elif accelerator.sync_gradients:  # unscale and check for inf only when the step really happens
            scaler.step(optimizer)
            scaler.update()
        if scheduler is not None:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return out
