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
import os
import platform
import resource
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from ssrr import __version__
from ssrr.config import RunConfig
from ssrr.data.formats import Manifest, load_manifest
from ssrr.data.remote import resolve_dataset_any
from ssrr.errors import SsrrError
from ssrr.files import append_line, keep_lines, open_log, write_text_atomic
from ssrr.hardware import tune_cpu_allocator
from ssrr.methods.base import EpochContext, Method, method_class, with_method_defaults
from ssrr.models.backbones import build_backbone
from ssrr.pipelines.loader import ViewLoader
from ssrr.precision import Execution
from ssrr.precision import resolve as resolve_execution
from ssrr.train import checkpoint as ckpt
from ssrr.train.progress import TrainDisplay, console, summary_table

METRICS_FILE = "metrics.jsonl"
THROUGHPUT_FILE = "throughput.json"
ENVIRONMENT_FILE = "environment.json"


@dataclass
class RunResult:
    run_dir: Path
    epochs_done: int
    steps: int
    throughput: dict[str, float]


def use_cuda(config: RunConfig) -> bool:
    return config.device != "cpu" and torch.cuda.is_available()


def _memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # peak RSS, KiB on Linux


def _environment(
    accelerator: Accelerator, config: RunConfig, execution: Execution, image_size: tuple[int, int]
) -> dict[str, Any]:
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
        "distributed_type": str(accelerator.distributed_type),
        "mixed_precision": {"fp32": "no"}.get(execution.precision, execution.precision),
        **execution.record(),
        "image_size": list(image_size),
        "sync_bn": config.sync_bn,
    }


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


class Probe(Protocol):
    """A held-out measurement the loop runs on the backbone every `every` complete epochs (see ssrr.eval.probes);
    its value is logged as `name` in metrics.jsonl, beside the pretraining time so far."""

    @property
    def name(self) -> str: ...

    @property
    def every(self) -> int: ...

    def __call__(self, backbone: torch.nn.Module, shard_dir: Path, execution: Execution) -> float: ...


def pretrain(config: RunConfig, *, resume: bool = False, show: bool = True, probes: Sequence[Probe] = ()) -> RunResult:
    """Run (or resume) one pretraining run; return where it wrote and its final throughput.

    `probes` are handed in by the caller (the loop imports no evaluation code); `ssrr.eval.probes.probes_for(config)`
    builds the ones `--knn-every` and `--eval-every` ask for."""
    config = with_method_defaults(config.resolved().validate()).validate()
    shard_dir = resolve_dataset_any(config.dataset, config.shards_root, show=show)  # a URL is fetched and cached
    manifest = load_manifest(shard_dir)
    cls = method_class(config.method)
    num_classes = _num_classes(config, manifest, cls.uses_labels, shard_dir)
    train_samples = sum(manifest.splits[name].samples for name in config.split.split("+") if name in manifest.splits)
    cls.check_data(config, train_samples, num_classes)  # before anything is written

    if config.device == "cuda" and not torch.cuda.is_available():
        raise SsrrError("--device cuda: no CUDA device is available")
    resume_from = _prepare_run_dir(config, resume)  # read-only: every rank decides the same
    accelerator = Accelerator(
        cpu=not use_cuda(config),
        mixed_precision="no",  # autocast and loss scaling are the Execution's (one path on every device)
        gradient_accumulation_steps=config.grad_accum,
        log_with=config.log_with or None,
        project_dir=str(config.run_dir),
    )
    device = accelerator.device
    execution = resolve_execution(config.precision, device, channels_last=config.channels_last)
    if device.type == "cpu":
        tune_cpu_allocator()
    if accelerator.is_main_process and show and execution.describe() != execution.precision:
        console.print(f"precision: {execution.describe()}")

    set_seed(config.seed)
    backbone = build_backbone(config.backbone)
    method: Method = cls(config, backbone, num_classes)
    if config.sync_bn and accelerator.num_processes > 1:
        method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
    method = execution.prepare(method)
    if config.compile:
        method.backbone = torch.compile(method.backbone)  # type: ignore[assignment]

    state: dict[str, Any] = {}
    if resume_from is not None:
        ckpt.load_method_weights(method, resume_from)
        state = ckpt.load_training_state(resume_from)
    optimizer = method.build_optimizer()

    def make_loader(recipe: Any, *, split: str = config.split, training: bool = True) -> ViewLoader:
        return ViewLoader(
            shard_dir,
            recipe,
            split=split,
            batch_size=config.batch,
            device=device,
            rank=accelerator.process_index,
            world_size=accelerator.num_processes,
            seed=config.seed,
            dtype=execution.view_dtype,
            training=training,
            num_threads=config.num_threads or None,
            skip_corrupt=config.skip_corrupt,
        )

    loader = make_loader(cls.recipe(config, manifest.image_size))
    steps_per_epoch = len(loader)
    if loader.skipped and accelerator.is_main_process:  # said even with --quiet, and recorded in the run
        console.print(f"--skip-corrupt: skipping {loader.skipped} corrupt samples of {shard_dir}", highlight=False)
    if steps_per_epoch == 0:
        raise SsrrError(
            f"{shard_dir}: the {config.split} split has too few samples for one batch of {config.batch} per process"
        )
    scheduler = method.build_scheduler(optimizer, steps_per_epoch)
    model, optimizer = accelerator.prepare(method, optimizer)
    scaler = execution.grad_scaler()
    if state:
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        ckpt.set_rng_state(state["rng"])

    run_dir = config.run_dir
    fresh = not run_dir.exists()
    with _removed_on_failure(run_dir, fresh and accelerator.is_main_process):
        if accelerator.is_main_process:
            run_dir.mkdir(parents=True, exist_ok=True)
            config.save(run_dir)
            env = _environment(accelerator, config, execution, manifest.image_size)
            write_text_atomic(run_dir / ENVIRONMENT_FILE, json.dumps(env, indent=2) + "\n")
            _trim_metrics(run_dir, int(state.get("step", 0)))
        if config.log_with:
            accelerator.init_trackers(config.name, config={k: str(v) for k, v in asdict(config).items()})

        epoch = int(state.get("epoch", 0))
        skip = int(state.get("batch_in_epoch", 0))
        global_step = int(state.get("step", 0))
        views_per_image = cls.views_per_image(config)
        unwrapped: Method = accelerator.unwrap_model(model)
        pairs_per_step = unwrapped.pairs_per_step(config.batch)
        throughput: dict[str, float] = {}
        interrupted = False

        def save(epoch_now: int, batch_now: int) -> None:
            if not accelerator.is_main_process:
                return
            training_state = {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "scaler": scaler.state_dict() if scaler is not None else None,
                "rng": ckpt.rng_state(),
                "epoch": epoch_now,
                "batch_in_epoch": batch_now,
                "step": global_step,
            }
            ckpt.save_checkpoint(
                run_dir, unwrapped, config.backbone, training_state, global_step, config.keep_checkpoints
            )

        display = TrainDisplay(show and accelerator.is_main_process, config.epochs)
        total_steps = _total_steps(config, steps_per_epoch)
        started = time.perf_counter()
        probe_s = 0.0
        elapsed_before = _elapsed_so_far(run_dir) if resume_from is not None else 0.0
        sample_log = None
        if config.log_samples:
            run_dir.mkdir(parents=True, exist_ok=True)
            sample_log = open_log(run_dir / f"samples-rank{accelerator.process_index}.jsonl")
        with display:
            while epoch < config.epochs and not (config.max_steps and global_step >= config.max_steps):
                unwrapped.on_epoch_start(
                    EpochContext(
                        epoch, make_loader, execution, num_classes, manifest.image_size, manifest.mean, manifest.std
                    )
                )
                model.train()
                display.start_epoch(epoch, steps_per_epoch)
                sums = {"loss": torch.zeros((), device=device)}
                counted = 0
                wait = 0.0
                epoch_start = time.perf_counter()
                batches = iter(loader.epoch(epoch))
                batch_in_epoch = 0
                try:
                    for _ in range(skip):  # resuming mid-epoch: the epoch's order is a function of (seed, epoch)
                        next(batches)
                        batch_in_epoch += 1
                    skip = 0
                    step_start = time.perf_counter()
                    while True:
                        tick = time.perf_counter()
                        batch = next(batches, None)
                        wait += time.perf_counter() - tick
                        if batch is None:
                            break
                        out = _train_step(accelerator, execution, model, batch, optimizer, scheduler, scaler)
                        if sample_log is not None:
                            sample_log.write(json.dumps([global_step, batch.index.tolist()]) + "\n")
                        batch_in_epoch += 1
                        global_step += 1
                        counted += 1
                        sums["loss"] += out.loss.detach().float()
                        for key, value in out.metrics.items():
                            tensor = torch.as_tensor(value, device=device, dtype=torch.float32)
                            sums[key] = sums.get(key, torch.zeros((), device=device)) + tensor.detach()
                        if display.enabled and (batch_in_epoch % 5 == 0 or batch_in_epoch == steps_per_epoch):
                            running = _rates(
                                sums,
                                counted,
                                time.perf_counter() - step_start,
                                wait,
                                config.batch,
                                views_per_image,
                                pairs_per_step,
                                accelerator.num_processes,
                                device,
                            )
                            per_step = (time.perf_counter() - step_start) / counted
                            display.update(batch_in_epoch, running, (total_steps - global_step) * per_step)
                        if config.max_steps and global_step >= config.max_steps:
                            break
                except KeyboardInterrupt:
                    interrupted = True
                elapsed = time.perf_counter() - epoch_start
                epoch_done = batch_in_epoch >= steps_per_epoch
                metrics = _rates(
                    sums,
                    counted,
                    elapsed,
                    wait,
                    config.batch,
                    views_per_image,
                    pairs_per_step,
                    accelerator.num_processes,
                    device,
                )
                metrics = _reduce_across_ranks(accelerator, metrics)
                next_epoch, next_batch = (epoch + 1, 0) if epoch_done else (epoch, batch_in_epoch)
                record = {"epoch": epoch + 1, "step": global_step, "complete": epoch_done, **metrics}
                record["skipped"] = loader.skipped  # corrupt samples left out (--skip-corrupt)
                probe_started = time.perf_counter()
                if epoch_done and accelerator.is_main_process:
                    record.update(_run_probes(probes, epoch + 1, unwrapped.backbone, shard_dir, execution))
                probe_s += time.perf_counter() - probe_started
                record["elapsed_s"] = round(elapsed_before + time.perf_counter() - started - probe_s, 3)
                if accelerator.is_main_process:
                    append_line(run_dir / METRICS_FILE, json.dumps(record))  # appended: resuming keeps history
                    if config.log_with:
                        accelerator.log(
                            {k: v for k, v in record.items() if isinstance(v, (int, float))}, step=global_step
                        )
                display.end_epoch(epoch, metrics)
                throughput = metrics
                last_epoch = next_epoch >= config.epochs
                stop_now = interrupted or bool(config.max_steps and global_step >= config.max_steps)
                if (next_epoch % config.checkpoint_every == 0) or last_epoch or stop_now or not epoch_done:
                    save(next_epoch, next_batch)
                epoch = next_epoch
                if interrupted:
                    break
        if sample_log is not None:
            sample_log.close()
        in_sync = _weights_in_sync(accelerator, unwrapped)
        accelerator.wait_for_everyone()
        total = time.perf_counter() - started
        if config.log_with:
            accelerator.end_training()
        if accelerator.is_main_process:
            summary = {
                **throughput,
                "wall_s": total,
                "steps": global_step,
                "epochs": epoch,
                "processes": accelerator.num_processes,
                "weights_in_sync": in_sync,
                **execution.record(),
                "projected_run_s": _projected_run_s(throughput, config, steps_per_epoch, accelerator.num_processes),
                "skipped": loader.skipped,
            }
            write_text_atomic(run_dir / THROUGHPUT_FILE, json.dumps(summary, indent=2) + "\n")
            if show:
                extra = {
                    "run": str(run_dir),
                    "method / backbone": f"{config.method} / {config.backbone}",
                    "K x M": f"{views_per_image} x {config.batch}",
                    "device": f"{device} x{accelerator.num_processes}",
                    "precision": execution.describe(),
                    "epochs / steps": f"{epoch} / {global_step}",
                    "wall": f"{total:.1f} s",
                    "configured run": f"~{_hours(summary['projected_run_s'])} at this speed",
                }
                console.print(summary_table("pretraining summary (last epoch)", throughput, extra))
    if interrupted:
        raise SsrrError(f"interrupted: progress saved in {run_dir}; continue with the same command and --resume")
    return RunResult(run_dir, epoch, global_step, throughput)


def _trim_metrics(run_dir: Path, step: int) -> None:
    """Before a run (re)starts at `step`: drop a half-written last line of metrics.jsonl and the records of
    steps after the checkpoint resumed from (a kill between a record and its checkpoint), which the resumed
    run writes again; a fresh run (step 0) keeps none."""

    def before(line: str) -> bool:
        try:
            return int(json.loads(line).get("step", 0)) <= step
        except (ValueError, TypeError, AttributeError):
            return False

    keep_lines(run_dir / METRICS_FILE, before)


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


def _num_classes(config: RunConfig, manifest: Manifest, uses_labels: bool, shard_dir: Path) -> int:
    """Classes of the labels a method trains on (supervised), or of the dataset (DeepCluster's k)."""
    splits = [manifest.splits[name] for name in config.split.split("+") if name in manifest.splits]
    if uses_labels and not all(split.labeled for split in splits):  # an unknown split: the loader's error
        raise SsrrError(f"{shard_dir}: split {config.split} is not all labelled; --method {config.method} needs labels")
    if config.labels == "coarse":
        if not manifest.coarse_classes:
            raise SsrrError(f"{shard_dir}: no coarse labels (only CIFAR-100 has them); drop --labels coarse")
        return len(manifest.coarse_classes)
    return max(manifest.num_classes, 1)


def _rates(
    sums: dict[str, torch.Tensor],
    steps: int,
    elapsed: float,
    wait: float,
    batch: int,
    views_per_image: int,
    pairs_per_step: int,
    processes: int,
    device: torch.device,
) -> dict[str, float]:
    steps = max(steps, 1)
    values = {key: float(value) / steps for key, value in sums.items()}  # one sync per report
    images = batch * steps * processes
    elapsed = max(elapsed, 1e-9)
    values.update(
        images_per_s=images / elapsed,
        views_per_s=images * views_per_image / elapsed,
        pairs_per_s=pairs_per_step * steps * processes / elapsed if pairs_per_step else None,  # type: ignore[arg-type]
        data_wait=wait / elapsed,
        memory_mb=_memory_mb(device),
    )
    return {k: v for k, v in values.items() if v is not None}


def _reduce_across_ranks(accelerator: Accelerator, metrics: dict[str, float]) -> dict[str, float]:
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


def _weights_in_sync(accelerator: Accelerator, method: torch.nn.Module) -> bool:
    """Whether every rank ends with bit-identical weights (DDP keeps them so; a mismatch means a bug)."""
    if accelerator.num_processes == 1:
        return True
    flat = torch.cat([p.detach().double().flatten() for p in method.parameters()])
    fingerprint = torch.stack(
        [flat.sum(), (flat * torch.arange(len(flat), dtype=flat.dtype, device=flat.device)).sum()]
    )
    gathered = accelerator.gather(fingerprint[None]).reshape(accelerator.num_processes, 2)
    return bool((gathered == gathered[0]).all())


def _run_probes(
    probes: Sequence[Probe], epochs_done: int, backbone: torch.nn.Module, shard_dir: Path, execution: Execution
) -> dict[str, float]:
    """The values of the probes due after `epochs_done` complete epochs."""
    return {
        probe.name: probe(backbone, shard_dir, execution)
        for probe in probes
        if probe.every and epochs_done % probe.every == 0
    }


def _elapsed_so_far(run_dir: Path) -> float:
    """Pretraining seconds recorded before a resume (the last `elapsed_s` of metrics.jsonl), so time keeps adding up."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return 0.0
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    try:  # a half-written last line (a killed run, trimmed by the main process) counts as nothing
        return float(json.loads(lines[-1]).get("elapsed_s", 0.0)) if lines else 0.0
    except (ValueError, TypeError, AttributeError):
        return 0.0


def _total_steps(config: RunConfig, steps_per_epoch: int) -> int:
    """Optimizer steps of the whole configured run (`--max-steps` caps it)."""
    total = config.epochs * steps_per_epoch
    return min(total, config.max_steps) if config.max_steps else total


def _projected_run_s(
    throughput: dict[str, float], config: RunConfig, steps_per_epoch: int, processes: int
) -> float | None:
    """Seconds the whole configured run takes at the last epoch's speed (what users plan by)."""
    images_per_s = throughput.get("images_per_s")  # summed over processes
    if not images_per_s:
        return None
    return _total_steps(config, steps_per_epoch) * config.batch * processes / images_per_s


def _hours(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"
