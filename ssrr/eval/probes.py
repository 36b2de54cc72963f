"""Held-out accuracy during pretraining: probes the loop runs every N epochs, handed to it by the caller.

The pretraining loop (`ssrr.train.loop.pretrain`) knows nothing of evaluation: it calls each `Probe` it is given
on the backbone at the end of every N-th complete epoch and records the value in `metrics.jsonl` beside the
pretraining time so far (`elapsed_s`, probe time excluded). So accuracy can be plotted against wall time
(`ssrr report --curves`) and a run's time to an accuracy read off its log.

- `knn_top1`: weighted k-NN (k=200) of the eval split against the train split (seconds).
- `linear_top1`: the paper's linear protocol (Adam, 100 epochs on cached features) on the eval split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ssrr.config import RunConfig
from ssrr.eval.linear import EPOCHS
from ssrr.eval.protocols import protocol
from ssrr.precision import Execution


@dataclass(frozen=True)
class KnnProbe:
    """k-NN top-1 of the eval split against the train split."""

    every: int
    split: str | None = None  # None: the dataset's labelled held-out split
    name: str = "knn_top1"

    def __call__(self, backbone: nn.Module, shard_dir: Path, execution: Execution) -> float:
        probe = protocol("knn").probe
        assert probe is not None
        return probe(backbone, shard_dir, execution, self.split)


@dataclass(frozen=True)
class LinearProbe:
    """Linear-protocol top-1 of the eval split (a new head on the train split's frozen features)."""

    every: int
    split: str | None = None  # None: the dataset's labelled held-out split
    epochs: int = EPOCHS
    seed: int = 1
    name: str = "linear_top1"

    def __call__(self, backbone: nn.Module, shard_dir: Path, execution: Execution) -> float:
        probe = protocol("linear").probe
        assert probe is not None
        return probe(backbone, shard_dir, execution, self.split, epochs=self.epochs, seed=self.seed)


def probes_for(config: RunConfig) -> list[KnnProbe | LinearProbe]:
    """The probes a run's config asks for (`--knn-every`, `--eval-every`)."""
    probes: list[KnnProbe | LinearProbe] = []
    if config.knn_every:
        probes.append(KnnProbe(config.knn_every))
    if config.eval_every:
        probes.append(LinearProbe(config.eval_every))
    return probes
