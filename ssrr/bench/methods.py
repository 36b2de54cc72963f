"""Training throughput of every registered method on one backbone, side by side with relational reasoning.

Each method runs its own pipeline recipe (DALI `ViewLoader`) and its own training step (forward, loss, backward,
optimiser; the benchmark's precision, `auto`: bf16 where the device runs it natively), as `ssrr pretrain` does. The
methods are timed round-robin: every repeat times each method once, so a change of load on a shared machine hits all
of them alike; figures are medians over repeats, warm-up excluded.

views/s counts every view the backbone processes per step (K per image for relational, 2 for SimCLR, 4 for
RotationNet, 1 for the others); `ratio_to_relational` divides a method's views/s by relational reasoning's.
DeepCluster's per-epoch pass (features of the whole train split, PCA, k-means) is timed once, `cluster_s`.
"""

from __future__ import annotations

import statistics
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from ssrr.bench.e2e import bench_execution, method_step
from ssrr.bench.timing import timed_steps
from ssrr.config import RunConfig
from ssrr.data.formats import load_manifest
from ssrr.methods import METHODS, method_class
from ssrr.methods.base import EpochContext
from ssrr.models.backbones import build_backbone
from ssrr.pipelines.loader import ViewLoader

DEFAULT_METHODS = ("relational", "simclr", "rotation", "deepcluster", "infomax", "supervised")


def bench_methods(
    shard_dir: Path | str,
    *,
    methods: tuple[str, ...] = DEFAULT_METHODS,
    backbone: str = "conv4",
    k: int = 32,
    m: int = 64,
    precision: str = "auto",
    steps: int = 10,
    repeats: int = 3,
    warmup: int = 2,
    device: str = "auto",
) -> dict[str, Any]:
    execution = bench_execution(device, precision)
    dev, dtype = execution.device, execution.view_dtype
    classes = len(load_manifest(shard_dir).classes)

    closing = ExitStack()  # every loader made here is closed when the timing ends, however it ends

    def make_loader(recipe: Any, *, split: str = "train", training: bool = True) -> ViewLoader:
        loader = ViewLoader(shard_dir, recipe, split=split, batch_size=m, training=training, device=dev, dtype=dtype)
        return closing.enter_context(loader)

    with closing:
        steppers, loaders, views, cluster_s = {}, {}, {}, None
        for name in methods:
            cls = method_class(name)
            config = RunConfig(method=name, backbone=backbone, k=k, batch=m, precision=execution.precision)
            torch.manual_seed(0)
            method = execution.prepare(cls(config, build_backbone(backbone), classes))
            method.train()
            if name == "deepcluster":
                started = time.perf_counter()
                method.on_epoch_start(EpochContext(0, make_loader, execution, classes))
                cluster_s = time.perf_counter() - started
            steppers[name] = method_step(method, execution)
            loaders[name] = make_loader(cls.recipe(config))
            views[name] = cls.views_per_image(config)

        rates: dict[str, list[float]] = {name: [] for name in methods}
        waits: dict[str, list[float]] = {name: [] for name in methods}
        for repeat in range(repeats):
            for name in methods:
                batches = loaders[name].endless(1000 * repeat)
                seconds, wait = timed_steps(batches, steppers[name], warmup, steps)
                batches.close()  # type: ignore[attr-defined]
                rates[name].append(steps * m * views[name] / seconds)
                waits[name].append(wait / seconds)

    results: dict[str, dict[str, Any]] = {
        name: {
            "views_per_s": statistics.median(rates[name]),
            "images_per_s": statistics.median(rates[name]) / views[name],
            "step_s": m * views[name] / statistics.median(rates[name]),
            "data_wait": statistics.median(waits[name]),
            "views_per_image": views[name],
            "runs": rates[name],
        }
        for name in methods
    }
    reference = results["relational"]["views_per_s"] if "relational" in results else None
    return {
        "methods": results,
        "ratio_to_relational": {n: float(r["views_per_s"]) / reference for n, r in results.items()}
        if reference
        else None,
        "cluster_s": cluster_s,
        "backbone": backbone,
        "k": k,
        "m": m,
        "amp": execution.precision != "fp32",
        **execution.record(),
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "steps": steps,
        "repeats": repeats,
        "known_methods": sorted(METHODS),
    }
