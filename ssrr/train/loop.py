"""The pretraining loop on accelerate: one CPU, one GPU, or many processes (`accelerate launch`).

Precision: `--amp` is bf16 autocast where the device supports it (every recent CPU path, Ampere+ GPUs),
fp16 autocast with loss scaling elsewhere. BatchNorm: local per process by default (each rank normalises
its own M images, as the paper's single-GPU setting does per batch); `--sync-bn` synchronises statistics.
Data: each rank reads its own slice of the shards (see `ssrr.pipelines.loader.ViewLoader`); every rank
takes the same number of steps per epoch. Checkpoints and logs are written by the main process only.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from ssrr import __version__
from ssrr.data.formats import Manifest, load_manifest
from ssrr.data.remote import resolve_dataset_any
from ssrr.errors import SsrrError
from ssrr.hardware import native_bf16, tune_cpu_allocator
from ssrr.methods.base import EpochContext, Method, method_class, with_method_defaults
from ssrr.models.backbones import build_backbone
from ssrr.pipelines.loader import ViewLoader
from ssrr.train import checkpoint as ckpt
from ssrr.train.config import RunConfig
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


def mixed_precision(config: RunConfig) -> str:
    """`--amp`: bf16 where it runs natively (Ampere+ GPUs, CPUs with AVX-512-BF16/AMX); fp16 with accelerate's
    loss scaling on older GPUs; float32 on CPUs that would only emulate bf16 (slower than float32 there)."""
    if not config.amp:
        return "no"
    if use_cuda(config):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if native_bf16("cpu") else "no"


def _memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # peak RSS, KiB on Linux


def _environment(accelerator: Accelerator, config: RunConfig, image_size: tuple[int, int]) -> dict[str, Any]:
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
        "mixed_precision": accelerator.mixed_precision,
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


def pretrain(config: RunConfig, *, resume: bool = False, show: bool = True) -> RunResult:
    """Run (or resume) one pretraining run; return where it wrote and its final throughput."""
    config = with_method_defaults(config.resolved().validate()).validate()
    shard_dir = resolve_dataset_any(config.dataset, config.shards_root, show=show)  # a URL is fetched and cached
    manifest = load_manifest(shard_dir)
    cls = method_class(config.method)
    num_classes = _num_classes(config, manifest, cls.uses_labels, shard_dir)
    train_samples = sum(manifest.splits[name].samples for name in config.split.split("+") if name in manifest.splits)
    cls.check_data(config, train_samples, num_classes)  # before anything is written

    if config.device == "cuda" and not torch.cuda.is_available():
        raise SsrrError("--device cuda: no CUDA device is available")
    precision = mixed_precision(config)
    resume_from = _prepare_run_dir(config, resume)  # read-only: every rank decides the same
    accelerator = Accelerator(
        cpu=not use_cuda(config),
        mixed_precision=precision,
        gradient_accumulation_steps=config.grad_accum,
        log_with=config.log_with or None,
        project_dir=str(config.run_dir),
    )
    device = accelerator.device
    if device.type == "cpu":
        tune_cpu_allocator()
    if config.amp and precision == "no" and accelerator.is_main_process and show:
        console.print("--amp: this CPU has no native bf16 (it would be emulated, slower): training in float32")

    set_seed(config.seed)
    backbone = build_backbone(config.backbone)
    method: Method = cls(config, backbone, num_classes)
    if config.sync_bn and accelerator.num_processes > 1:
        method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
    if config.channels_last:
        method = method.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
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
            dtype=torch.bfloat16 if precision == "bf16" else torch.float32,
            training=training,
            num_threads=config.num_threads or None,
            skip_corrupt=config.skip_corrupt,
        )

    loader = make_loader(cls.recipe(config, manifest.image_size))
    steps_per_epoch = len(loader)
    if loader.skipped and accelerator.is_main_process and show:
        console.print(f"--skip-corrupt: skipping {loader.skipped} corrupt samples of {shard_dir}")
    if steps_per_epoch == 0:
        raise SsrrError(
            f"{shard_dir}: the {config.split} split has too few samples for one batch of {config.batch} per process"
        )
    scheduler = method.build_scheduler(optimizer, steps_per_epoch)
    model, optimizer = accelerator.prepare(method, optimizer)
    if state:
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
        if accelerator.scaler is not None and state.get("scaler"):
            accelerator.scaler.load_state_dict(state["scaler"])
        ckpt.set_rng_state(state["rng"])

    run_dir = config.run_dir
    fresh = not run_dir.exists()
    with _removed_on_failure(run_dir, fresh and accelerator.is_main_process):
        if accelerator.is_main_process:
            run_dir.mkdir(parents=True, exist_ok=True)
            config.save(run_dir)
            env = _environment(accelerator, config, manifest.image_size)
            (run_dir / ENVIRONMENT_FILE).write_text(json.dumps(env, indent=2) + "\n")
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
                "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
                "rng": ckpt.rng_state(),
                "epoch": epoch_now,
                "batch_in_epoch": batch_now,
                "step": global_step,
            }
            ckpt.save_checkpoint(
                run_dir, unwrapped, config.backbone, training_state, global_step, config.keep_checkpoints
            )

        display = TrainDisplay(show and accelerator.is_main_process, config.epochs)
        started = time.perf_counter()
        sample_log = None
        if config.log_samples:
            run_dir.mkdir(parents=True, exist_ok=True)
            sample_log = open(run_dir / f"samples-rank{accelerator.process_index}.jsonl", "a")  # noqa: SIM115
        with display:
            while epoch < config.epochs and not (config.max_steps and global_step >= config.max_steps):
                unwrapped.on_epoch_start(
                    EpochContext(
                        epoch, make_loader, device, num_classes, manifest.image_size, manifest.mean, manifest.std
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
                        with accelerator.accumulate(model):
                            with accelerator.autocast():
                                out = model(batch)
                            accelerator.backward(out.loss)
                            optimizer.step()
                            if scheduler is not None:
                                scheduler.step()
                            optimizer.zero_grad(set_to_none=True)
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
                            display.update(batch_in_epoch, running)
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
                knn = _maybe_knn(config, epoch_done, epoch, unwrapped, shard_dir, device, accelerator)
                if knn is not None:
                    record["knn_top1"] = knn
                if accelerator.is_main_process:
                    with open(run_dir / METRICS_FILE, "a") as log:  # appended: resuming never loses history
                        log.write(json.dumps(record) + "\n")
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
            }
            (run_dir / THROUGHPUT_FILE).write_text(json.dumps(summary, indent=2) + "\n")
            if show:
                extra = {
                    "run": str(run_dir),
                    "method / backbone": f"{config.method} / {config.backbone}",
                    "K x M": f"{views_per_image} x {config.batch}",
                    "device": f"{device} x{accelerator.num_processes} ({precision})",
                    "epochs / steps": f"{epoch} / {global_step}",
                    "wall": f"{total:.1f} s",
                }
                console.print(summary_table("pretraining summary (last epoch)", throughput, extra))
    if interrupted:
        raise SsrrError(f"interrupted: progress saved in {run_dir}; continue with the same command and --resume")
    return RunResult(run_dir, epoch, global_step, throughput)


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


def _maybe_knn(
    config: RunConfig,
    epoch_done: bool,
    epoch: int,
    method: Method,
    shard_dir: Path,
    device: torch.device,
    accelerator: Accelerator,
) -> float | None:
    if not (config.knn_every and epoch_done and (epoch + 1) % config.knn_every == 0):
        return None
    if not accelerator.is_main_process:
        return None
    from ssrr.eval.knn import knn_probe

    return knn_probe(method.backbone, shard_dir, device=device)
