"""Accuracy during pretraining: probes the loop runs every N epochs, handed to it by the caller.

The pretraining loop (`ssrr.train.loop.pretrain`) knows nothing of evaluation: it calls each `Probe` it is given
on the backbone at the end of every N-th complete epoch and records the value in `metrics.jsonl` beside the
pretraining time so far (`elapsed_s`, probe time excluded) and the split it scored (`probe_split`). So accuracy can
be plotted against wall time (`ssrr report --curves`) and a run's time to an accuracy read off its log.

Which split a probe scores (`probe_splits`): `--probe-split`, else the dataset's validation split (`ssrr shard
--val N`) when the run does not train on it, else its held-out split (test; val for tiny-ImageNet). Settings are
chosen on the validation split; `ssrr eval` reports the held-out split. The probes' feature bank (the linear
head's training data, the k-NN gallery) is the labelled part of the split the run trains on (train, or
train+val), `train` when it has none (STL-10's unlabeled).

- `knn_top1`: weighted k-NN (k=200) of the scored split against the bank (seconds).
- `linear_top1`: the paper's linear protocol (Adam, 100 epochs on cached features) on the scored split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ssrr.config import RunConfig
from ssrr.data.formats import Manifest, load_manifest
from ssrr.errors import SsrrError
from ssrr.eval.linear import EPOCHS
from ssrr.eval.protocols import protocol
from ssrr.precision import Execution


def probe_splits(manifest: Manifest, train_split: str = "train", probe_split: str = "") -> tuple[str, str]:
    """(feature bank, scored split) of the probes of a run that trains on `train_split` (see the module doc)."""
    parts = train_split.split("+")
    labelled = [name for name in parts if name in manifest.splits and manifest.splits[name].labeled]
    bank = "+".join(labelled) or "train"
    validation = manifest.validation_split
    scored = probe_split or (validation if validation and validation not in parts else None)
    scored = scored or manifest.held_out_split or "test"
    info = manifest.splits.get(scored)
    if info is None or not info.labeled:
        has = ", ".join(name for name, split in manifest.splits.items() if split.labeled)
        raise SsrrError(f"{manifest.name}: --probe-split {scored}: not a labelled split (labelled: {has})")
    return bank, scored


@dataclass(frozen=True)
class KnnProbe:
    """k-NN top-1 of the scored split against the bank (the run's training split)."""

    every: int
    split: str | None = None  # None: the default of `probe_splits`
    bank: str | None = None  # None: train
    name: str = "knn_top1"

    def __call__(self, backbone: nn.Module, shard_dir: Path, execution: Execution) -> float:
        bank, split = _splits(shard_dir, self.bank, self.split)
        probe = protocol("knn").probe
        assert probe is not None
        return probe(backbone, shard_dir, execution, split, bank=bank)


@dataclass(frozen=True)
class LinearProbe:
    """Linear-protocol top-1 of the scored split (a new head on the bank's frozen features)."""

    every: int
    split: str | None = None  # None: the default of `probe_splits`
    epochs: int = EPOCHS
    seed: int = 1
    bank: str | None = None  # None: train
    every_steps: int = 0  # > 0: every N optimizer steps instead of every `every` epochs (ssrr bench accuracy)
    name: str = "linear_top1"

    def __call__(self, backbone: nn.Module, shard_dir: Path, execution: Execution) -> float:
        bank, split = _splits(shard_dir, self.bank, self.split)
        probe = protocol("linear").probe
        assert probe is not None
        return probe(backbone, shard_dir, execution, split, bank=bank, epochs=self.epochs, seed=self.seed)


def _splits(shard_dir: Path, bank: str | None, split: str | None) -> tuple[str, str]:
    """The bank and scored split a probe was given, their defaults filled in from the manifest."""
    if bank is not None and split is not None:
        return bank, split
    default_bank, default_split = probe_splits(load_manifest(shard_dir))
    return bank or default_bank, split or default_split


def probes_for(config: RunConfig) -> list[KnnProbe | LinearProbe]:
    """The probes a run's config asks for (`--knn-every`, `--eval-every`), on the splits of `probe_splits`."""
    if not (config.knn_every or config.eval_every):
        return []
    from ssrr.data.remote import resolve_dataset_any

    manifest = load_manifest(resolve_dataset_any(config.dataset, config.shards_root, show=False))
    bank, split = probe_splits(manifest, config.split, config.probe_split)
    probes: list[KnnProbe | LinearProbe] = []
    if config.knn_every:
        probes.append(KnnProbe(config.knn_every, split=split, bank=bank))
    if config.eval_every:
        probes.append(LinearProbe(config.eval_every, split=split, bank=bank))
    return probes
