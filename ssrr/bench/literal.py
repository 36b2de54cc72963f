"""The REFERENCE: a literal transcription of Algorithm 1's pair stage (lines 8-17), the way the authors'
public code runs it: Python loops over the view pairs i < j, an explicit shuffle per pair, explicit
concatenation, then the relation head on the concatenated pairs.

It is deliberately slow. The tests check the vectorised stage in `ssrr.relational` against it (pairs, targets,
logits, loss and gradients) and `ssrr.bench.step` times it as the baseline. Do not use it for training.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["literal_aggregate", "literal_relation_logits", "literal_shuffle"]


def literal_shuffle(zj: Tensor, shift: int) -> Tensor:
    """SHUFFLE without collisions, one sample at a time (Algorithm 1, lines 23-30) with the public code's
    choice of m~: row m takes image (m - shift) mod M, i.e. `torch.roll(zj, shift, 0)`."""
    m = zj.shape[0]
    rows = []
    for r in range(m):
        r_tilde = (r - shift) % m
        assert r_tilde != r, "collision"
        rows.append(zj[r_tilde])
    return torch.stack(rows, dim=0)


def _literal_agg(a: Tensor, b: Tensor, aggregation: str) -> Tensor:
    if aggregation == "cat":
        return torch.cat([a, b], dim=1)
    if aggregation == "sum":
        return a + b
    if aggregation == "mean":
        return (a + b) / 2.0
    if aggregation == "max":
        return torch.max(torch.stack([a, b], dim=2), dim=2)[0]
    raise ValueError(f"unknown aggregation {aggregation!r}")


def literal_aggregate(
    z: Tensor, k: int, aggregation: str = "cat", per_sample_shuffle: bool = False
) -> tuple[Tensor, Tensor]:
    """Algorithm 1, lines 8-15: (aggregated pairs (P, in), targets (P,)) from z (K*M, D), view-major.

    For i in 1..K-1, for j in i+1..K: the positive block a(Z_i, Z_j) with target 1, then the negative block
    a(Z_i, shuffled Z_j) with target 0. The shuffle is a roll by a shift that starts at 1, grows by 1 per pair
    and wraps to 1 before reaching M. `per_sample_shuffle` builds the shuffled block one sample at a time
    (`literal_shuffle`) instead of with `torch.roll` (same values)."""
    m = z.shape[0] // k
    pairs: list[Tensor] = []
    targets: list[Tensor] = []
    shift = 1
    for i in range(k - 1):
        for j in range(i + 1, k):
            zi = z[i * m : (i + 1) * m]
            zj = z[j * m : (j + 1) * m]
            pairs.append(_literal_agg(zi, zj, aggregation))
            targets.append(torch.ones(m, dtype=torch.float32, device=z.device))
            zj_shuffled = literal_shuffle(zj, shift) if per_sample_shuffle else torch.roll(zj, shifts=shift, dims=0)
            pairs.append(_literal_agg(zi, zj_shuffled, aggregation))
            targets.append(torch.zeros(m, dtype=torch.float32, device=z.device))
            shift += 1
            if shift >= m:
                shift = 1
    return torch.cat(pairs, dim=0), torch.cat(targets, dim=0)


def literal_relation_logits(
    z: Tensor, head: nn.Module, k: int, aggregation: str = "cat", per_sample_shuffle: bool = False
) -> tuple[Tensor, Tensor]:
    """Algorithm 1, line 16: (logits (P,), targets (P,)), the head applied to the concatenated pairs."""
    pairs, targets = literal_aggregate(z, k, aggregation, per_sample_shuffle)
    return head(pairs).reshape(-1), targets
