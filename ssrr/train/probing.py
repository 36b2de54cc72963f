"""The evaluation probes handed to the loop (`pretrain(config, probes=...)`): when they are due, running them on
rank 0 while the others wait, and keeping their time out of the pretraining time.

Probes run at the end of every `every`-th complete epoch, in the epoch's metrics.jsonl record; a probe with
`every_steps` runs every N optimizer steps instead (`ssrr bench accuracy`: several times an epoch), its mid-epoch
values in lines of their own.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import torch

from ssrr.files import append_line
from ssrr.train.records import METRICS_FILE
from ssrr.train.setup import Training
from ssrr.train.state import EpochTally, Probe, Progress


def run_probes(t: Training, progress: Progress, due: Sequence[Probe]) -> dict[str, Any]:
    """The values of the `due` probes (rank 0 computes them, the others wait) and the split they scored
    (`probe_split`); their time is counted in `progress.probe_s`, so it is no pretraining time."""
    if not due:
        return {}
    if t.device.type == "cuda":  # the steps queued so far are training time: finish them before the probe's clock
        torch.cuda.synchronize(t.device)
    started = time.perf_counter()
    values: dict[str, Any] = {}
    if t.main:
        values = {probe.name: probe(t.method.backbone, t.shard_dir, t.execution) for probe in due}
        scored = sorted({str(split) for split in (getattr(probe, "split", None) for probe in due) if split})
        if scored:  # which split the values are of (validation or test): one name, or several joined by ","
            values["probe_split"] = ",".join(scored)
    t.accelerator.wait_for_everyone()  # the other ranks wait out rank 0's probes, within the group's timeout
    progress.probe_s += time.perf_counter() - started
    return values


def step_probes(t: Training, progress: Progress, tally: EpochTally, probes: Sequence[Probe]) -> None:
    """Probes asked for every N steps (a probe's `every_steps`: several in an epoch, so a time to an accuracy
    is not rounded to an epoch), within an epoch: a metrics.jsonl line of their own (`"probe_only": true`).
    Their time is left out of the pretraining time and of the epoch's rates."""
    due = [p for p in probes if getattr(p, "every_steps", 0) and progress.step % p.every_steps == 0]  # type: ignore[attr-defined]
    if not due:
        return
    before = progress.probe_s
    values = run_probes(t, progress, due)
    tally.started += progress.probe_s - before
    tally.step_started += progress.probe_s - before
    record = {"epoch": progress.epoch + 1, "step": progress.step, "complete": False, "probe_only": True, **values}
    record["elapsed_s"] = round(progress.pretraining_s(), 3)
    if t.main:
        append_line(t.config.run_dir / METRICS_FILE, json.dumps(record))


def due_probes(probes: Sequence[Probe], epochs_done: int, last: bool, step: int = 0) -> list[Probe]:
    """The probes due after `epochs_done` epochs (`step` steps): every `every` complete epochs, or for a probe
    with `every_steps` at each multiple of it, and after the run's `last` epoch (so a curve always ends at the
    final backbone). The same on every rank."""

    def due(probe: Probe) -> bool:
        every_steps = int(getattr(probe, "every_steps", 0))
        if every_steps:
            return step % every_steps == 0 or last
        return bool(probe.every) and (epochs_done % probe.every == 0 or last)

    return [probe for probe in probes if due(probe)]
