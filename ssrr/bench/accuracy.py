"""Time to an accuracy: the same relational pretraining done our way and the public code's way, each backbone
scored by the paper's linear protocol, over seeds (1, 2, 3 by default), mean +- std on both sides.

Ours: `ssrr pretrain` itself (DALI views, fused relation head, checkpoints and logs included in its time), with
the linear probe handed to the loop. Baseline, in the same process, alternating with ours seed by seed: the
torchvision reference loader feeding the public implementation's step (NCHW, literal pair loop), its DataLoader
workers and torch threads tuned once by a short probe of the settings grid (`ssrr.bench.baseline`), for the
same epochs, K, M, loss, optimiser, device and precision. Both are scored by the same linear protocol (on the
validation split when the shards have one, else the held-out split); with a target, `PROBES_PER_EPOCH` times an
epoch (every `probe_every_steps` steps), and the pretraining time (probe time excluded) at the first probe reaching
the target is the time to it. `wall_ratio` is the ratio of the pretraining times at equal epochs.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ssrr.bench.baseline import Baseline, Setting, Timing, baseline_step, best_setting, grid
from ssrr.bench.e2e import bench_execution
from ssrr.bench.step import intra_op_threads
from ssrr.config import RunConfig
from ssrr.data.formats import load_manifest
from ssrr.eval.curves import Curve, read_curve
from ssrr.eval.probes import LinearProbe, probe_splits
from ssrr.precision import Execution
from ssrr.train.loop import pretrain

PROBES_PER_EPOCH = 4  # with a target: probes an epoch, ours and the baseline's alike


def _ours(shard_dir: Path, config: RunConfig, probe: LinearProbe, execution: Execution) -> tuple[float, Curve]:
    with tempfile.TemporaryDirectory(prefix="ssrr-bench-accuracy-") as runs:
        run = pretrain(
            replace(config, out=runs, name="ours", device="cuda" if execution.device.type == "cuda" else "cpu"),
            show=False,
            probes=[probe],
        )
        curve = read_curve(run.run_dir, probe.name)
    assert curve is not None  # the probe ran at the last epoch at least
    return curve.seconds[-1], curve


def _baseline(baseline: Baseline, setting: Setting, epochs: int, seed: int, probe: LinearProbe) -> tuple[float, Curve]:
    """Train the public-code way for `epochs`, probing as ours is probed (every `probe.every_steps` steps, else
    every `probe.every` epochs, and at the end); probe time is left out of the training time."""
    torch.manual_seed(seed)
    seconds, times, values = 0.0, [], []
    steps, probed_at = 0, -1
    with intra_op_threads(setting.threads):
        step, net = baseline_step(baseline.backbone, baseline.k, baseline.execution, setting.channels_last)

        def score() -> None:
            nonlocal probed_at
            times.append(seconds)
            values.append(probe(net.eval(), Path(baseline.shard_dir), baseline.execution))
            net.train()
            probed_at = steps

        for epoch in range(epochs):
            started = time.perf_counter()
            net.train()
            for batch in baseline.epoch(setting.workers, seed * 1000 + epoch):
                step(batch)
                steps += 1
                if probe.every_steps and steps % probe.every_steps == 0:
                    seconds += _synced(baseline.execution) - started
                    score()
                    started = time.perf_counter()
            seconds += _synced(baseline.execution) - started
            last = epoch + 1 == epochs
            epoch_due = not probe.every_steps and probe.every and (epoch + 1) % probe.every == 0
            if probed_at != steps and (last or epoch_due):
                score()
    return seconds, Curve("baseline", probe.name, times, values)


def _synced(execution: Execution) -> float:
    """The clock once the device's queued work is done (a GPU runs steps asynchronously)."""
    if execution.device.type == "cuda":
        torch.cuda.synchronize(execution.device)
    return time.perf_counter()


def probe_every_steps(shard_dir: Path, m: int) -> int:
    """Steps between probes so that an epoch (of one process at M images a step) has `PROBES_PER_EPOCH`."""
    steps_per_epoch = load_manifest(shard_dir).samples_in("train") // m
    return max(1, steps_per_epoch // PROBES_PER_EPOCH)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _time_to(curves: list[Curve], target: float | None) -> float | None:
    """Mean time to `target` over seeds, or None when a seed never reached it."""
    if target is None:
        return None
    times = [curve.time_to(target) for curve in curves]
    return None if any(t is None for t in times) else statistics.fmean(t for t in times if t is not None)


def bench_time_to_accuracy(
    shard_dir: Path | str,
    *,
    backbone: str = "conv4",
    k: int = 4,
    m: int = 64,
    epochs: int = 2,
    seeds: Sequence[int] = (1, 2, 3),
    linear_epochs: int = 100,
    precision: str = "fp32",
    device: str = "auto",
    target_top1: float | None = None,
    probe_steps: int = 3,
) -> dict[str, Any]:
    """Ours and the baseline for each seed in turn; mean +- std of top-1 and pretraining time over the seeds."""
    shard_dir = Path(shard_dir)
    execution = bench_execution(device, precision, channels_last=False)
    if target_top1 is not None:  # several probes an epoch: the time to the target is not rounded to an epoch
        probe = LinearProbe(0, epochs=linear_epochs, every_steps=probe_every_steps(shard_dir, m))
    else:
        probe = LinearProbe(epochs, epochs=linear_epochs)
    config = RunConfig(
        dataset=str(shard_dir), backbone=backbone, k=k, batch=m, epochs=epochs, precision=execution.precision
    )
    baseline = Baseline(shard_dir, backbone, k, m, execution)
    tried, setting = best_setting(baseline, Timing(1, probe_steps, 1), grid())
    ours, theirs = [], []
    for seed in seeds:
        ours.append(_ours(shard_dir, replace(config, seed=seed), probe, execution))
        theirs.append(_baseline(baseline, setting, epochs, seed, probe))
    top1, baseline_top1 = [c.values[-1] for _, c in ours], [c.values[-1] for _, c in theirs]
    wall, baseline_wall = [s for s, _ in ours], [s for s, _ in theirs]
    to_target = _time_to([c for _, c in ours], target_top1)
    baseline_to_target = _time_to([c for _, c in theirs], target_top1)
    return {
        "seeds": list(seeds),
        "top1_mean": _mean_std(top1)[0],
        "top1_std": _mean_std(top1)[1],
        "baseline_top1_mean": _mean_std(baseline_top1)[0],
        "baseline_top1_std": _mean_std(baseline_top1)[1],
        "wall_s": statistics.fmean(wall),
        "baseline_wall_s": statistics.fmean(baseline_wall),
        "speedup": statistics.fmean(baseline_wall) / statistics.fmean(wall),
        "wall_ratio": statistics.fmean(baseline_wall) / statistics.fmean(wall),  # at equal epochs (and views)
        "target_top1": target_top1,
        "probe_split": probe_splits(load_manifest(shard_dir))[1],  # validation when the shards have one
        "probe_every_steps": probe.every_steps or None,  # None: after the last epoch only
        "time_to_target_s": to_target,
        "baseline_time_to_target_s": baseline_to_target,
        "time_to_target_ratio": baseline_to_target / to_target if to_target and baseline_to_target else None,
        "curves": [{"seed": s, "seconds": c.seconds, "top1": c.values} for s, (_, c) in zip(seeds, ours, strict=True)],
        "baseline_curves": [
            {"seed": s, "seconds": c.seconds, "top1": c.values} for s, (_, c) in zip(seeds, theirs, strict=True)
        ],
        "baseline_settings": {"best": setting.record(), "tried": tried},
        "dataset": str(shard_dir),
        "backbone": backbone,
        "k": k,
        "m": m,
        "epochs": epochs,
        "linear_epochs": linear_epochs,
        **execution.record(),
        "device": str(execution.device),
    }
