"""Execution: pretrain and evaluate what is not complete (in this process or under a launcher), or print it."""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ssrr.config import RunConfig
from ssrr.data.remote import is_url
from ssrr.errors import SsrrError
from ssrr.experiments.planning import EvalJob, Plan, Run, missing_datasets, shard_hint, status
from ssrr.experiments.tables import Log
from ssrr.run_options import config_args, dataset_image_size, given_fields, prepare

# ------------------------------------------------------------------------------------------- 3. execute


def pretrain_args(config: RunConfig, *, resume: bool = True) -> list[str]:
    """The `ssrr pretrain` options that make exactly this config, generated from the options' declarations
    (`ssrr.run_options.config_args`); a planned config sets its batch (the method's, as the authors)."""
    args = config_args(config)
    return [*args, "--resume"] if resume else args


def eval_args(run: Run, job: EvalJob, shards_root: str, device: str = "auto") -> list[str]:
    """The `ssrr eval PROTOCOL ...` arguments of one evaluation job."""
    args = [job.protocol, run.source, "--dataset", job.dataset]
    if job.labels != "fine":
        args += ["--labels", job.labels]
    if job.fractions:  # semi: linear at these labelled fractions
        args += ["--fractions", ",".join(f"{f:g}" for f in job.fractions), "--mode", "linear"]
    args += ["--epochs", str(job.epochs), "--seed", str(job.seed), "--shards-root", shards_root]
    if device != "auto":
        args += ["--device", device]
    if run.config is None:
        args += ["--out", str(job.out_dir)]
    return args


DEFAULT_LAUNCH = "accelerate launch"


def commands(plan: Plan, runs: Sequence[Run], launch: str | None = None, device: str = "auto") -> list[str]:
    """Shell lines for the work left: `<launch> -m ssrr pretrain ... --resume`, then `ssrr eval ...`.

    Complete runs and evaluations are left out (a `# NAME: done` comment stands for a complete run).
    """
    prefix = shlex.split(launch or DEFAULT_LAUNCH)
    lines = []
    for run in runs:
        state = status(run)
        if state.word == "done":
            lines.append(f"# {run.name}: done")
            continue
        lines.append(f"# {run.name}: {state.word}")
        if run.config is not None and state.pretrain != "done":
            lines.append(shlex.join([*prefix, "-m", "ssrr", "pretrain", *pretrain_args(run.config)]))
        for job, job_state in zip(run.evaluations, state.evaluations, strict=True):
            if job_state != "done":
                lines.append(shlex.join(["ssrr", "eval", *eval_args(run, job, plan.shards_root, device)]))
    return lines


def execute(
    plan: Plan,
    runs: Sequence[Run],
    *,
    launch: str | None = None,
    show: bool = True,
    device: str = "auto",
    cache: str | Path | None = None,
    log: Log = print,
) -> dict[str, int]:
    """Pretrain and evaluate, in order, whatever of `runs` is not complete; return counts of what was done.

    Pretraining goes through `ssrr.train.loop.pretrain` (always with resume: a started run continues from
    its last checkpoint, a new one starts), or through `<launch> -m ssrr pretrain ...` when `launch` is
    given (e.g. ``accelerate launch --multi_gpu --num_processes 8``). Evaluations run in this process.
    """
    states = {run.name: status(run) for run in runs}
    conflicts = [f"{name} ({s.conflict})" for name, s in states.items() if s.word == "conflict"]
    if conflicts:
        raise SsrrError(
            f"{plan.runs_dir}: {len(conflicts)} run(s) made with other settings, e.g. {conflicts[0]}; "
            "use another --runs folder (or remove them)"
        )
    todo = [run for run in runs if states[run.name].word != "done"]
    missing = missing_datasets(todo, plan.shards_root)
    if missing:
        raise SsrrError(
            f"missing shards for {', '.join(Path(d).name for d in missing)} under {plan.shards_root}/: "
            f"make them with {shard_hint(missing, plan.shards_root)}"
        )
    counts = {"pretrained": 0, "evaluated": 0, "skipped": 0}
    for number, run in enumerate(runs, 1):
        state = states[run.name]
        where = f"[{number}/{len(runs)}] {run.name}"
        if state.word == "done":
            log(f"{where}: done")
            counts["skipped"] += 1
            continue
        if run.config is not None and state.pretrain != "done":
            log(f"{where}: pretrain ({'resume' if state.pretrain == 'partial' else 'start'})")
            _pretrain(run, plan, launch, show, cache)
            counts["pretrained"] += 1
            state = status(run)
            if state.pretrain != "done":
                raise SsrrError(f"{run.folder}: pretraining ended before its configured epochs")
        for job, job_state in zip(run.evaluations, state.evaluations, strict=True):
            if job_state == "done":
                log(f"{where}: {job.tag} done")
                continue
            log(f"{where}: {job.tag}")
            _evaluate(run, job, plan.shards_root, device, cache, show)
            counts["evaluated"] += 1
    return counts


def _local_dataset(dataset: str, shards_root: str, cache: str | Path | None, show: bool) -> Path:
    from ssrr.data.remote import resolve_dataset_any

    return resolve_dataset_any(dataset, shards_root, cache, show=show)


def _pretrain(run: Run, plan: Plan, launch: str | None, show: bool, cache: str | Path | None) -> None:
    assert run.config is not None
    config = run.config
    if is_url(config.shards_root) or is_url(config.dataset):  # fetched once, then read from the local cache
        local = _local_dataset(config.dataset, config.shards_root, cache, show)
        config = replace(config, dataset=str(local), shards_root=str(local.parent))
    if launch:
        command = [*shlex.split(launch), "-m", "ssrr", "pretrain", *pretrain_args(config)]
        if not show:
            command.append("--quiet")
        code = subprocess.run(command, check=False).returncode
        if code != 0:
            raise SsrrError(f"{run.name}: `{shlex.join(command)}` failed (exit code {code})")
        return
    from ssrr.eval.probes import probes_for
    from ssrr.train.loop import pretrain

    # The same config a launched `ssrr pretrain <pretrain_args> --resume` would take: what it gives wins.
    config = prepare(config, given_fields(config), dataset_image_size, resume=True)
    pretrain(config, resume=True, show=show, probes=probes_for(config))


def _evaluate(run: Run, job: EvalJob, shards_root: str, device: str, cache: str | Path | None, show: bool) -> None:
    from ssrr.eval.common import seed_everything
    from ssrr.eval.protocols import protocol
    from ssrr.train.checkpoint import load_backbone

    shard_dir = _local_dataset(job.dataset, shards_root, cache, show)
    seed_everything(job.seed)  # before loading: random weights are drawn from the seed
    loaded = load_backbone(run.source)
    options: dict[str, Any] = {"labels": job.labels, "epochs": job.epochs, "seed": job.seed, "device": device}
    if job.fractions:  # semi: linear at these labelled fractions
        options.update(fractions=job.fractions, mode="linear")
    protocol(job.protocol).run(loaded, shard_dir, out=job.out_dir, **options)
