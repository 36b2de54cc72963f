"""Scales: how big the planned work is (`full` is the paper; the others shrink it for smaller machines)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from ssrr.errors import SsrrError
from ssrr.experiments.tables import (
    FRACTIONS,
    K_DEFAULT,
    K_VALUES,
    NAMES,
    SEEDS,
    TABLE_NAMES,
    TableSpec,
    backbones_table,
    k_table,
    labels_table,
    table1,
    table2,
)


@dataclass(frozen=True)
class Scale:
    """How big the planned work is. `full` is the paper; the others shrink it.

    `dataset`, when set, replaces every dataset slot (the tiny scale reads the embedded synthetic data for
    all of them, so table columns then show the same data under the paper's names); `backbones` maps the
    paper's backbones to cheaper ones; `grain` False drops the coarse-label evaluations (data without
    coarse labels); `pretrain_epochs` None keeps each experiment's own (200, or 300 for STL-10).
    """

    name: str
    summary: str
    seeds: tuple[int, ...] = SEEDS
    k: int = K_DEFAULT
    k_values: tuple[int, ...] = K_VALUES
    fractions: tuple[float, ...] = FRACTIONS
    pretrain_epochs: int | None = None
    max_steps: int = 0
    batch: int = 0  # 0: each method's (64 relational, 128 the baselines)
    linear_epochs: int = 100
    finetune_epochs: int = 100
    semi_epochs: int = 100
    dataset: str | None = None
    backbones: tuple[tuple[str, str], ...] = ()
    grain: bool = True
    runs: str = "runs"  # the default --runs folder

    def backbone(self, name: str) -> str:
        return dict(self.backbones).get(name, name)

    def data(self, slot: str) -> str:
        return self.dataset or slot


SCALES: dict[str, Scale] = {
    "full": Scale(
        "full", "the paper: 200 epochs (300 STL-10), K=32, M=64 (baselines 128), linear 100 epochs, seeds 1-3"
    ),
    "small": Scale(
        "small",
        "the paper's runs on the real datasets, cut short: 2 epochs (at most 200 steps), linear 10 epochs",
        pretrain_epochs=2,
        max_steps=200,
        linear_epochs=10,
        finetune_epochs=2,
        semi_epochs=10,
        runs="runs-small",
    ),
    "cifar10": Scale(
        "cifar10",
        "every dataset slot read from the real CIFAR-10 shards (`ssrr shard imagefolder "
        "../shared/data/cifar10-jpeg.tar.gz --name cifar10-jpeg`), every backbone -> conv4, the same budget for "
        "every method: 3 epochs, K=8, linear 100 epochs, fine-tune 1 epoch, seeds 1-3, no grain",
        k=8,
        k_values=(4, 8, 16),
        pretrain_epochs=3,
        finetune_epochs=1,
        semi_epochs=100,
        dataset="cifar10-jpeg",
        backbones=(("resnet32", "conv4"), ("resnet34", "conv4"), ("resnet56", "conv4")),
        grain=False,
        runs="runs-cifar10",
    ),
    "tiny": Scale(
        "tiny",
        "every dataset slot read from the embedded `synthetic` shards, resnet32/34 -> resnet8, conv4 kept, "
        "1 epoch (at most 10 steps), M=32, K=4 (sweep 2,4,8), linear 5 epochs, seeds 1-2, no grain",
        seeds=(1, 2),
        k=4,
        k_values=(2, 4, 8),
        pretrain_epochs=1,
        max_steps=10,
        batch=32,
        linear_epochs=5,
        finetune_epochs=1,
        semi_epochs=5,
        dataset="synthetic",
        backbones=(("resnet32", "resnet8"), ("resnet34", "resnet8")),
        grain=False,
        runs="runs-tiny",
    ),
}


def with_backbones(scale: Scale, swaps: list[str]) -> Scale:
    """The scale with some of the paper's backbones replaced (`--backbone resnet32=tv:resnet18`, repeatable):
    every table then trains and evaluates the named backbone in that slot."""
    pairs = list(scale.backbones)
    for swap in swaps:
        paper, _, name = swap.partition("=")
        if not paper or not name:
            raise SsrrError(f"--backbone {swap!r}: use PAPER=NAME, e.g. resnet32=tv:resnet18")
        pairs.append((paper, name))  # later pairs win in `Scale.backbone`
    return replace(scale, backbones=tuple(pairs))


def get_scale(name: str) -> Scale:
    if name not in SCALES:
        raise SsrrError(f"--scale must be one of {', '.join(SCALES)}, got {name!r}")
    return SCALES[name]


def tables(name: str, scale: Scale) -> list[TableSpec]:
    """The named table(s) at a scale's K values: `paper` is all five."""
    builders: dict[str, Callable[[], TableSpec]] = {
        "table1": lambda: table1(scale.k),
        "table2": lambda: table2(scale.k),
        "k": lambda: k_table(scale.k_values),
        "labels": lambda: labels_table(scale.k, scale.fractions),
        "backbones": lambda: backbones_table(scale.k),
    }
    if name == "paper":
        return [builders[n]() for n in TABLE_NAMES]
    if name not in builders:
        raise SsrrError(f"unknown experiment {name!r} (choose from: {', '.join(NAMES)})")
    return [builders[name]()]
