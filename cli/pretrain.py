"""`ssrr pretrain`: the paper's relational pretraining (and the baselines) from shards to runs/NAME."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import fields
from typing import Any

import typer
from ssrr.cli.common import AMP_HELP, PRECISION_HELP, precision_option

from ssrr.config import RunConfig
from ssrr.errors import SsrrError
from ssrr.launch import (
    Machines,
    accelerate_request,
    inside_launcher,
    parent_command,
    relaunch_command,
    slurm_machines,
)
from ssrr.options import parse_duration
from ssrr.presets import apply_preset


def pretrain(
    ctx: typer.Context,
    preset: str = typer.Option(
        "paper",
        help="paper: the paper's settings (below). fast: the same method tuned for accuracy per second "
        "(docs/fast.md); options typed here override it.",
    ),
    method: str = typer.Option(
        "relational", help="relational, or a baseline: simclr, rotation, deepcluster, infomax, supervised."
    ),
    dataset: str = typer.Option("cifar100", help="Dataset name under --shards-root, or a shard folder."),
    backbone: str = typer.Option(
        "resnet32",
        help="The paper's: conv4, resnet8, resnet32, resnet56, resnet34. Any torchvision classification model as "
        "tv:NAME (tv:resnet18, tv:resnet50, tv:vit_b_16, ...) or timm model as timm:NAME (pip install "
        '"ssrr[timm]"), its classifier removed; never downloaded weights.',
    ),
    stem: str = typer.Option(
        "default",
        help="tv:/timm: ResNet-style backbones: default (their own), or cifar (3x3 conv stride 1, no max-pool) for "
        "32-64 px images.",
    ),
    k: int = typer.Option(32, "--k", help="Augmentations (views) per image."),
    batch: int = typer.Option(
        0, help="Images per step per process (M); 0: the method's (64 relational, 128 the baselines, as the authors)."
    ),
    epochs: int = typer.Option(200, help="Epochs (the paper: 200; 300 for STL-10)."),
    lr: float | None = typer.Option(
        None, help="Learning rate (default: the method's: Adam 1e-3; infomax Adam 1e-4; supervised SGD 0.1)."
    ),
    weight_decay: float = typer.Option(0.0, help="Weight decay."),
    lr_schedule: str = typer.Option(
        "constant", help="constant (the paper's), or cosine: decay to 0 at the last step (after any warm-up)."
    ),
    warmup_epochs: float = typer.Option(0.0, help="Linear learning-rate warm-up over this many epochs."),
    crop_min: float = typer.Option(0.08, help="Smallest area fraction of the random resized crop (paper: 0.08)."),
    view_size: int = typer.Option(
        0, help="Side of the first epoch's training views in pixels (0: the images' own; evaluation stays there)."
    ),
    view_size_end: int = typer.Option(0, help="Side of the last epoch's views, linear in between (0: --view-size)."),
    bn_recalibrate: bool = typer.Option(
        False,
        "--bn-recalibrate/--no-bn-recalibrate",
        help="After the last epoch, recompute the backbone's BatchNorm statistics on the clean training images.",
    ),
    loss: str = typer.Option("focal", help="focal (gamma 2, alpha 0.5) or bce."),
    aggregation: str = typer.Option("cat", help="cat, sum, mean or max."),
    head: str = typer.Option("relation", help="relation, dot or encoder-dot (the seed's head ablation)."),
    labels: str = typer.Option("fine", help="supervised only: fine or coarse labels."),
    split: str = typer.Option(
        "train",
        help="Split to train on; + joins splits: train+unlabeled (STL-10), train+val (all of train after --val).",
    ),
    amp: bool = typer.Option(False, "--amp/--no-amp", help=AMP_HELP),
    precision: str | None = typer.Option(None, help=PRECISION_HELP),
    channels_last: bool = typer.Option(True, "--channels-last/--no-channels-last", help="NHWC memory format."),
    compile: bool = typer.Option(False, "--compile/--no-compile", help="torch.compile the backbone."),
    grad_accum: int = typer.Option(1, help="Gradient accumulation steps."),
    sync_bn: bool = typer.Option(False, "--sync-bn/--no-sync-bn", help="Synchronise BatchNorm across processes."),
    seed: int = typer.Option(1, help="Seed for weights, data order and augmentations."),
    out: str = typer.Option("runs", help="Folder of runs."),
    name: str = typer.Option("", help="Run name (default: METHOD-BACKBONE-DATASET-sSEED)."),
    shards_root: str = typer.Option("shards", help="Where dataset names are looked up."),
    keep_checkpoints: int = typer.Option(2, help="Checkpoints kept (the newest N)."),
    checkpoint_every: int = typer.Option(1, help="Checkpoint every N epochs."),
    max_steps: int = typer.Option(0, help="Stop after N optimizer steps in total (0: all epochs)."),
    time_budget: str | None = typer.Option(
        None,
        help="End pretraining within this time (900s, 15m, 0.25h): the run measures its pace over its first steps "
        "and plans its steps and schedule to fit; --epochs then only caps it. --preset fast: 15m unless --epochs "
        "is typed.",
    ),
    knn_every: int = typer.Option(0, help="k-NN probe on --probe-split every N epochs and after the last (0: never)."),
    eval_every: int = typer.Option(
        0, help="Linear protocol on --probe-split every N epochs and after the last, with the time (0: never)."
    ),
    probe_split: str = typer.Option(
        "",
        help="Split the --knn-every/--eval-every probes score (default: the validation split of `ssrr shard --val` "
        "when the run does not train on it, else the held-out test split).",
        show_default=False,
    ),
    log_with: list[str] = typer.Option([], help="accelerate tracker: tensorboard or wandb (repeatable)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    num_threads: int = typer.Option(0, help="DALI threads (0: the run's thread plan: timed once per machine)."),
    threads: int = typer.Option(0, help="torch threads on the CPU (0: the run's thread plan: timed once per machine)."),
    skip_corrupt: bool = typer.Option(False, "--skip-corrupt", help="Skip (and count) corrupt samples."),
    log_samples: bool = typer.Option(False, "--log-samples", help="Record each rank's sample indices per step."),
    simclr_loss: str = typer.Option(
        "nt-xent", help="simclr: nt-xent (mean of -log p), or official (the authors' code: -log of the mean p)."
    ),
    infomax_prior: str = typer.Option(
        "adversarial",
        help="infomax: adversarial (the encoder fools the prior critic), or official (the authors' code: both "
        "minimise the critic's loss).",
    ),
    infomax_critic: str = typer.Option(
        "concat", help="infomax: concat (the authors' concatenate-and-convolve critic) or dot (encode-and-dot)."
    ),
    supervised_augment: str = typer.Option(
        "crop-flip",
        help="supervised: crop-flip (pad side/8), or affine-erase (flip, random affine, random erasing: the "
        "authors' STL-10 transform).",
    ),
    processes: int = typer.Option(1, help="Processes on this machine: relaunches itself under `accelerate launch`."),
    machines: int = typer.Option(
        1, help="Machines of a --processes run (each runs this command; inside srun: SLURM's node count)."
    ),
    machine_rank: int = typer.Option(0, help="This machine's rank, 0 to --machines - 1 (inside srun: SLURM's)."),
    main_address: str = typer.Option(
        "127.0.0.1", help="Address of machine 0, which every machine reaches (inside srun: the first node)."
    ),
    main_port: int = typer.Option(29500, help="Port machine 0 listens on for the process group."),
    resume: bool = typer.Option(False, "--resume", help="Continue runs/NAME from its last checkpoint."),
    quiet: bool = typer.Option(False, "--quiet", help="No live display or summary."),
) -> None:
    """Pretrain a backbone; writes runs/NAME (config, environment, metrics.jsonl, checkpoints).

    Examples:

      ssrr pretrain --k 32 --amp                      # the paper: resnet32, M=64, 200 epochs, shards/cifar100

      ssrr pretrain --dataset shards/cifar10-jpeg --backbone conv4 --k 4 --epochs 2 --name quick

      ssrr pretrain --preset fast --dataset shards/cifar10-jpeg --backbone conv4   # docs/fast.md

      ssrr pretrain --dataset shards/photos --backbone tv:resnet18 --k 4 --view-size 96 --epochs 1 --name r18

      ssrr pretrain --name quick --epochs 4 --resume  # continue (and extend) a run

      accelerate launch --multi_gpu --num_processes 2 -m ssrr pretrain --dataset cifar10 --backbone conv4

      ssrr pretrain --processes 8 --machines 2 --machine-rank 0 --main-address 10.0.0.1   # each machine, its rank
    """
    asked = accelerate_request(parent_command())  # `accelerate launch` without --multi_gpu started us alone
    if asked is not None:
        if processes > 1 or machines > 1:
            raise SsrrError("--processes / --machines inside `accelerate launch --num_processes`: give one of them")
        raise typer.Exit(_relaunch(asked[0], asked[1].check()))
    if (processes > 1 or machines > 1) and not inside_launcher():
        place = Machines(machines, machine_rank, main_address, main_port)
        raise typer.Exit(_relaunch(processes, slurm_machines(os.environ, place, _typed(ctx)).check()))
    from ssrr.eval.probes import probes_for
    from ssrr.train.loop import pretrain as run

    values = {f.name: ctx.params[f.name] for f in fields(RunConfig) if f.name in ctx.params}
    values["log_with"] = list(values.get("log_with") or [])
    values["precision"] = precision_option(precision, amp)
    values["time_budget_s"] = parse_duration(time_budget) if time_budget is not None else 0.0
    typed = _typed(ctx)
    values = apply_preset(values, preset, typed, lambda: _image_size(values))
    config = RunConfig(**values)
    if resume:
        config = _merge_with_saved(typed, config)
    run(config, resume=resume, show=not quiet, probes=probes_for(config))


def _image_size(values: dict[str, Any]) -> tuple[int, int]:
    """(H, W) of the run's dataset, for a preset whose view side follows the images'."""
    from ssrr.data.formats import load_manifest
    from ssrr.data.remote import resolve_dataset_any

    manifest = load_manifest(resolve_dataset_any(values["dataset"], values["shards_root"], show=False))
    return manifest.image_size


def _typed(ctx: typer.Context) -> set[str]:
    """The options typed on this command line (`--amp` counts as typing the precision): they beat presets and,
    on --resume, the saved config."""
    typed = {name for name in ctx.params if _given(ctx, name)}
    if "amp" in typed:
        typed.add("precision")
    if "time_budget" in typed:
        typed.add("time_budget_s")
    return typed


def _merge_with_saved(typed: set[str], config: RunConfig) -> RunConfig:
    """On --resume, the saved config wins except for options typed on this command line."""
    resolved = config.resolved()
    try:
        saved = RunConfig.load(resolved.run_dir)
    except Exception:  # no saved run yet: --resume starts it
        return config
    explicit = {f.name: getattr(config, f.name) for f in fields(RunConfig) if f.name in typed}
    merged = {**{f.name: getattr(saved, f.name) for f in fields(RunConfig)}, **explicit}
    merged["out"], merged["name"] = config.out, resolved.name  # the folder the config came from, never its own
    merged["log_with"] = list(merged.get("log_with") or [])
    return RunConfig(**merged)


def _relaunch(processes: int, machines: Machines) -> int:
    """`ssrr pretrain --processes N ...` = `accelerate launch --multi_gpu --num_processes N -m ssrr pretrain ...`
    (with `--machines`: N per machine, accelerate's machine options passed on; see `ssrr.launch`)."""
    if processes < 1:
        raise SsrrError(f"--processes must be at least 1, got {processes}")
    launcher = subprocess.Popen(relaunch_command(sys.argv[1:], processes, machines))
    try:
        return launcher.wait()
    except KeyboardInterrupt:
        # Ctrl-C: the launcher stops its ranks (each saying its one line); wait for that instead of killing it,
        # which would leave the ranks running. Passed on for a SIGINT sent to this process alone.
        launcher.send_signal(signal.SIGINT)
        return launcher.wait()


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether option `name` was typed on the command line (typer bundles its own click: compare by name)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


def register(app: typer.Typer) -> None:
    app.command("pretrain")(pretrain)
