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

from ssrr.data.formats import load_manifest
from ssrr.eval.features import class_names, extract_features
from ssrr.eval.knn import knn_probe
from ssrr.eval.linear import EPOCHS, fit_and_score
from ssrr.precision import Execution
from ssrr.train.config import RunConfig


@dataclass(frozen=True)
class KnnProbe:
    """k-NN top-1 of the eval split against the train split."""

    every: int
    split: str = "test"
    name: str = "knn_top1"

    def __call__(self, backbone: nn.Module, shard_dir: Path, execution: Execution) -> float:
        return knn_probe(backbone, shard_dir, execution=execution, test_split=self.split)


@dataclass(frozen=True)
class LinearProbe:
    """Linear-protocol top-1 of the eval split (a new head on the train split's frozen features)."""

    every: int
    split: str = "test"
    epochs: int = EPOCHS
    seed: int = 1
    name: str = "linear_top1"

    def __call__(self, backbone: nn.Module, shard_dir: Path, execution: Execution) -> float:
        names = class_names(load_manifest(shard_dir), "fine")
        train = extract_features(backbone, shard_dir, "train", device=execution)
        held_out = extract_features(backbone, shard_dir, self.split, device=execution)
        metrics, _ = fit_and_score(
            train, held_out, "fine", names, epochs=self.epochs, seed=self.seed, device=execution.device
        )
        return float(metrics["top1"])


def probes_for(config: RunConfig) -> list[KnnProbe | LinearProbe]:
    """The probes a run's config asks for (`--knn-every`, `--eval-every`)."""
    probes: list[KnnProbe | LinearProbe] = []
    if config.knn_every:
        probes.append(KnnProbe(config.knn_every))
    if config.eval_every:
        probes.append(LinearProbe(config.eval_every))
    return probes
