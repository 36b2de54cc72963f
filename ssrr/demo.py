"""The main job end to end on the embedded synthetic data, in a few minutes on two CPU cores:
shard it, pretrain a conv4 with relational reasoning, and compare linear evaluation of the learned
backbone with the same backbone at random weights (the paper's lower bound)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ssrr.train.loop import RunResult

# Small enough for ~3 minutes on 2 cores, large enough for a clear margin over random weights.
DEMO_SETTINGS: dict[str, Any] = {"backbone": "conv4", "k": 8, "batch": 64, "epochs": 10, "precision": "auto"}
DEMO_LINEAR_EPOCHS = 100  # the paper's protocol


@dataclass
class DemoResult:
    shard_dir: Path
    run: RunResult
    learned: dict[str, Any]
    random: dict[str, Any]
    wall_s: float


def unused_name(out: Path, stem: str) -> str:
    """`stem`, or `stem-2`, `stem-3`, ...: a demo never overwrites an earlier run."""
    if not (out / stem).exists():
        return stem
    number = 2
    while (out / f"{stem}-{number}").exists():
        number += 1
    return f"{stem}-{number}"


def run_demo(
    *,
    shards: str | Path = "shards",
    out: str | Path = "runs",
    seed: int = 1,
    epochs: int = DEMO_SETTINGS["epochs"],
    k: int = DEMO_SETTINGS["k"],
    linear_epochs: int = DEMO_LINEAR_EPOCHS,
    show: bool = True,
) -> DemoResult:
    # Imported here: the command line reads this module's defaults without loading torch and DALI.
    from ssrr.data.sources import load_dataset
    from ssrr.data.writer import write_dataset
    from ssrr.eval.linear import linear_eval
    from ssrr.train.checkpoint import load_backbone
    from ssrr.train.config import RunConfig
    from ssrr.train.loop import pretrain

    started = time.perf_counter()
    dataset = load_dataset("synthetic", seed=0)  # the embedded data: always the same images
    write_dataset(dataset, shards, seed=0, command="ssrr demo")
    shard_dir = Path(shards) / dataset.name
    out = Path(out)
    config = RunConfig(
        method="relational",
        dataset=str(shard_dir),
        out=str(out),
        name=unused_name(out, "demo"),
        seed=seed,
        **{**DEMO_SETTINGS, "epochs": epochs, "k": k},
    )
    run = pretrain(config, show=show)
    learned = linear_eval(load_backbone(run.run_dir), shard_dir, epochs=linear_epochs, seed=seed)
    random = linear_eval(
        load_backbone(f"random:{config.backbone}"),
        shard_dir,
        epochs=linear_epochs,
        seed=seed,
        out=run.run_dir / "eval" / "random-weights",
    )
    return DemoResult(shard_dir, run, learned, random, time.perf_counter() - started)
