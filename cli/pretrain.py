"""`ssrr pretrain`: the paper's relational pretraining (and the baselines) from shards to runs/NAME.

Its options that set the run config are not written here: they come from their one declaration, RunConfig's
fields and each method's options (`ssrr.run_options`); this file adds the launch options and `--amp`.
"""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
from typing import Any

import typer
from rich.markup import escape
from ssrr.cli.common import AMP_HELP

from ssrr.declare import GROUPS, base_type, choices, optional
from ssrr.errors import SsrrError
from ssrr.launch import (
    Machines,
    accelerate_request,
    inside_launcher,
    parent_command,
    relaunch_command,
    slurm_machines,
)
from ssrr.run_options import RunOption, config_from_options, dataset_image_size, run_options

LAUNCH = "Launch"
# Options of the command itself, not of the run config: (name, type, default, flags, help, panel).
COMMAND_OPTIONS: list[tuple[str, Any, Any, tuple[str, ...], str, str]] = [
    ("amp", bool, False, ("--amp/--no-amp",), AMP_HELP, "Model"),
    ("processes", int, 1, ("--processes",), "Processes on this machine: relaunches itself under `accelerate "
     "launch`.", LAUNCH),
    ("machines", int, 1, ("--machines",), "Machines of a --processes run (each runs this command; inside srun: "
     "SLURM's node count).", LAUNCH),
    ("machine_rank", int, 0, ("--machine-rank",), "This machine's rank, 0 to --machines - 1 (inside srun: "
     "SLURM's).", LAUNCH),
    ("main_address", str, "127.0.0.1", ("--main-address",), "Address of machine 0, which every machine reaches "
     "(inside srun: the first node).", LAUNCH),
    ("main_port", int, 29500, ("--main-port",), "Port machine 0 listens on for the process group.", LAUNCH),
    ("resume", bool, False, ("--resume",), "Continue runs/NAME from its last checkpoint.", "Run"),
    ("quiet", bool, False, ("--quiet",), "No live display or summary.", "Run"),
]  # fmt: skip


def pretrain(ctx: typer.Context, **options: Any) -> None:
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
    processes, machines = options["processes"], options["machines"]
    asked = accelerate_request(parent_command())  # `accelerate launch` without --multi_gpu started us alone
    if asked is not None:
        if processes > 1 or machines > 1:
            raise SsrrError("--processes / --machines inside `accelerate launch --num_processes`: give one of them")
        raise typer.Exit(_relaunch(asked[0], asked[1].check()))
    typed = _typed(ctx)
    if (processes > 1 or machines > 1) and not inside_launcher():
        place = Machines(machines, options["machine_rank"], options["main_address"], options["main_port"])
        raise typer.Exit(_relaunch(processes, slurm_machines(os.environ, place, typed).check()))
    from ssrr.eval.probes import probes_for
    from ssrr.train.loop import pretrain as run

    if "amp" in typed and "precision" not in typed:  # `--amp` alone: --precision auto
        options["precision"] = "auto" if options["amp"] else "fp32"
        typed.add("precision")
    config = config_from_options(options, typed, dataset_image_size, resume=options["resume"])
    run(config, resume=options["resume"], show=not options["quiet"], probes=probes_for(config))


def _parameter(spec: RunOption) -> inspect.Parameter:
    """The typer parameter of one run option: its flag, the field's default and help, its group's panel."""
    hint = base_type(spec.hint)
    if spec.how.parse is not None or choices(hint) is not None:
        hint = str  # parsed (`15m`) or checked (one line naming the flag) by the library, not by click
    annotation = hint | None if optional(spec.hint) else hint
    if hint is bool:
        flags = (f"{spec.flag}/--no-{spec.flag[2:]}",) if spec.how.negative else (spec.flag,)
    else:
        flags = (spec.flag,)
    default = typer.Option(
        spec.default, *flags, help=escape(spec.how.help), rich_help_panel=spec.how.group.capitalize()
    )
    return inspect.Parameter(spec.param, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def _signature() -> inspect.Signature:
    """`pretrain`'s parameters: the context, every run option (from its declaration), the command's own."""
    context = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
    specs = sorted(run_options(), key=lambda spec: GROUPS.index(spec.how.group))
    own = [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            annotation=kind,
            default=typer.Option(default, *flags, help=text, rich_help_panel=panel),
        )
        for name, kind, default, flags, text, panel in COMMAND_OPTIONS
    ]
    return inspect.Signature([context, *(_parameter(spec) for spec in specs), *own])


def _typed(ctx: typer.Context) -> set[str]:
    """The options typed on this command line: they beat the preset and, on --resume, the saved config."""
    return {name for name in ctx.params if _given(ctx, name)}


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


pretrain.__signature__ = _signature()  # type: ignore[attr-defined]  # typer reads the parameters from it


def register(app: typer.Typer) -> None:
    app.command("pretrain")(pretrain)
