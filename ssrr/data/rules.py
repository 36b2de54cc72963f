"""The rules a sample's `.lbl` member must keep, in one place: `ssrr shard verify` and the loader apply these.

A `.lbl` holds (fine, coarse, index) as three little-endian int32 (`ssrr.data.formats.encode_labels`). Given
those columns for many samples at once, `label_rules` returns one boolean mask per rule (True: the sample
breaks it) with a message template; `ssrr.data.verify` formats the message per sample, the loader's shard
check (`ssrr.pipelines.shards`) drops or refuses the flagged samples. One function, so the two cannot disagree
(tests/test_shard_rules.py feeds the same bad shards to both).

The rules:
- fine: a class (0..classes-1) in a labelled split; a class or -1 (no label) in an unlabelled one;
- coarse: a superclass (0..coarse-1) in a labelled split of a dataset with superclasses, a superclass or -1 in
  an unlabelled one, and -1 wherever the dataset has no superclasses;
- index: the sample index stored is the one in the member's name (`<split>-<9 digits>`), within the split's
  numbers (`SplitInfo.indices`: 0.. for most splits; a carved validation split numbers on after train).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ssrr.data import formats


@dataclass(frozen=True)
class Broken:
    """Samples breaking one rule: `mask` (True where broken) and a message formatted with one sample's `fine`,
    `coarse`, `index` and `owner` (the key its stored index belongs to)."""

    mask: np.ndarray
    message: str

    def describe(self, fine: int, coarse: int, index: int, split: str) -> str:
        owner = formats.sample_key(split, index) if index >= 0 else "none"
        return self.message.format(fine=fine, coarse=coarse, index=index, owner=owner)


def named_index(key: str, split: str) -> int:
    """The sample index a member's key names (`<split>-<9 digits>` -> the number), -1 when it names none."""
    prefix = f"{split}-"
    digits = key[len(prefix) :] if key.startswith(prefix) else ""
    return int(digits) if len(digits) == 9 and digits.isdigit() else -1


def label_rules(
    fine: np.ndarray,
    coarse: np.ndarray,
    index: np.ndarray,
    named: np.ndarray,
    manifest: formats.Manifest,
    split: str,
) -> list[Broken]:
    """The rules (see the module docstring) that a split's `.lbl` columns break, each as a mask over the samples.

    `named` is the index each sample's key names (`named_index`; -1 for a key of another shape: the key's own
    shape is the verifier's to report, so only a well-formed key is compared with the stored index)."""
    info = manifest.splits[split]
    first, last = info.indices.start, info.indices.stop - 1  # a carved validation split numbers on after train
    classes, supers, none = manifest.num_classes, len(manifest.coarse_classes), formats.NO_LABEL
    fine_class = (fine >= 0) & (fine < classes)
    if info.labeled:
        broken = [Broken(~fine_class, f"fine label {{fine}} outside 0..{classes - 1}")]
    else:
        broken = [Broken(~fine_class & (fine != none), "fine label {fine} is neither -1 nor a class")]
    if supers:
        coarse_class = (coarse >= 0) & (coarse < supers)
        bad_coarse = ~coarse_class if info.labeled else ~coarse_class & (coarse != none)
        broken.append(Broken(bad_coarse, f"coarse label {{coarse}} outside 0..{supers - 1}"))
    else:
        broken.append(Broken(coarse != none, "coarse label {coarse} but the dataset has no coarse classes"))
    broken += [
        Broken((index < first) | (index >= first + info.samples), f"index {{index}} outside {first}..{last}"),
        Broken((named >= 0) & (index != named), "carries index {index}, which belongs to key {owner}"),
    ]
    return [rule for rule in broken if rule.mask.any()]
