"""The relational pair stage of Algorithm 1, vectorised: no Python loop over view pairs.

Layout: the backbone sees the K views of the M images stacked view-major, so the representation of view v
(0-based) of image m is row `v*M + m` of z (K*M, D).

`pair_schedule(k, m, device)` precomputes, once per (K, M, device), index tensors that list every pair in
Algorithm 1's order: for i in 0..K-2, for j in i+1..K-1, a block of M positives (z_i[m], z_j[m]) with target 1,
then a block of M negatives (z_i[m], z_j[s(m)]) with target 0. That is P = 2*M*K(K-1)/2 = M*K*(K-1) rows.

Negatives ("shuffling without collisions"). Default `shuffle="roll"`, the authors' public scheme: the
right-hand block is z_j rolled by a shift (`torch.roll(z_j, shift, 0)`, so row m pairs with image
(m - shift) mod M); the shift starts at 1 for the first pair (i, j), grows by 1 for each pair and wraps back
to 1 once it reaches M, so it is never 0 mod M and no image is ever paired with itself. `shuffle="random"`
draws, for every row independently, m~ uniformly from {0..M-1} minus {m}, as line 26 of Algorithm 1 (fresh
indices on each call; not cached). Both need M >= 2 (no collision-free shuffle of one image) and K >= 2.
Note: line 12 of Algorithm 1 writes SHUFFLE(Z^(i)) but line 13 pairs Z^(i) with the shuffled Z^(j); like the
authors' code, the right-hand (j) block is the shuffled one.

`relation_logits(z, head, schedule)` is the fast path (the head projects each view once, then gathers);
`relation_pairs(z, schedule, aggregation)` builds the explicit aggregated pairs (tests, heads without a fast
path). `pair_accuracy` splits accuracy by target, not by row position (the public code split rows at half
although positive and negative blocks alternate). The literal transcription of Algorithm 1, the reference the
tests and the benchmark compare against, is `ssrr.bench.literal`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

import torch
from torch import Tensor, nn

from ssrr.errors import SsrrError
from ssrr.models.heads import PairPlan, aggregate

__all__ = [
    "SHUFFLES",
    "PairSchedule",
    "num_pairs",
    "pair_accuracy",
    "pair_schedule",
    "relation_logits",
    "relation_pairs",
    "roll_shifts",
]

SHUFFLES = ("roll", "random")


@dataclass(frozen=True)
class PairSchedule:
    """Index tensors for every relation pair, in Algorithm 1's order (see the module docstring).

    left, right: (P,) int64 row indices into z (K*M, D); targets: (P,) float32, 1 for positives, 0 for
    negatives; pair_i, pair_j: (K(K-1)/2,) the 0-based views of each block pair; shifts: (K(K-1)/2,) the roll
    shift of each pair's negative block (`roll` shuffle) or all -1 (`random`). Cached schedules are shared:
    treat the tensors as read-only.
    """

    k: int
    m: int
    shuffle: str
    left: Tensor
    right: Tensor
    targets: Tensor
    pair_i: Tensor
    pair_j: Tensor
    shifts: Tensor

    @property
    def num_pairs(self) -> int:
        """P, the number of scored pairs (positives plus negatives)."""
        return self.left.shape[0]

    @cached_property
    def plan(self) -> PairPlan:
        """Per-row pair counts and the sparse pair-count matrix, for the fused relation head (built once)."""
        return PairPlan(self.left, self.right, self.k * self.m)

    @property
    def device(self) -> torch.device:
        return self.left.device

    def to(self, device: torch.device | str) -> PairSchedule:
        """The same schedule with its tensors on `device`."""
        fields = {n: getattr(self, n).to(device) for n in ("left", "right", "targets", "pair_i", "pair_j", "shifts")}
        return PairSchedule(k=self.k, m=self.m, shuffle=self.shuffle, **fields)


def num_pairs(k: int, m: int) -> int:
    """P = 2 * M * K(K-1)/2 (63,488 at K=32, M=64)."""
    return m * k * (k - 1)


def roll_shifts(k: int, m: int) -> list[int]:
    """The public code's shift per view pair: 1, 2, ..., M-1, 1, 2, ... (K(K-1)/2 values, never 0)."""
    _check(k, m)
    return [(p % (m - 1)) + 1 for p in range(k * (k - 1) // 2)]


def _check(k: int, m: int) -> None:
    if k < 2:
        raise SsrrError(f"relational reasoning needs at least K=2 views per image, got K={k}")
    if m < 2:
        raise SsrrError(f"a collision-free shuffle needs a mini-batch of at least M=2 images, got M={m}")


def _build(k: int, m: int, shuffle: str, generator: torch.Generator | None) -> PairSchedule:
    _check(k, m)
    if shuffle not in SHUFFLES:
        raise SsrrError(f"unknown shuffle {shuffle!r} (known: {', '.join(SHUFFLES)})")
    iu = torch.triu_indices(k, k, offset=1)  # row-major: (0,1), (0,2), ..., (1,2), ... = Algorithm 1's order
    pair_i, pair_j = iu[0], iu[1]
    npairs = pair_i.shape[0]
    rows = torch.arange(m)
    if shuffle == "roll":
        shifts = torch.tensor(roll_shifts(k, m), dtype=torch.long)
        neg_rows = (rows.unsqueeze(0) - shifts.unsqueeze(1)) % m  # torch.roll(x, s)[r] = x[(r - s) mod M]
    else:
        shifts = torch.full((npairs,), -1, dtype=torch.long)
        offsets = torch.randint(1, m, (npairs, m), generator=generator)
        neg_rows = (rows.unsqueeze(0) + offsets) % m
    left_blk = (pair_i * m).unsqueeze(1) + rows.unsqueeze(0)  # (npairs, M)
    right_pos = (pair_j * m).unsqueeze(1) + rows.unsqueeze(0)
    right_neg = (pair_j * m).unsqueeze(1) + neg_rows
    left = torch.stack([left_blk, left_blk], dim=1).reshape(-1)  # (npairs, 2 [pos, neg], M)
    right = torch.stack([right_pos, right_neg], dim=1).reshape(-1)
    targets = torch.stack([torch.ones(npairs, m), torch.zeros(npairs, m)], dim=1).reshape(-1)
    return PairSchedule(k, m, shuffle, left, right, targets, pair_i, pair_j, shifts)


@lru_cache(maxsize=64)
def _cached(k: int, m: int, device: str) -> PairSchedule:
    return _build(k, m, "roll", None).to(device)


def pair_schedule(
    k: int,
    m: int,
    device: torch.device | str | None = None,
    shuffle: str = "roll",
    generator: torch.Generator | None = None,
) -> PairSchedule:
    """The pair indices and targets for K views of M images (cached per (K, M, device) for `roll`).

    Raises `SsrrError` for K < 2, M < 2 or an unknown shuffle."""
    dev = str(torch.device("cpu") if device is None else torch.device(device))
    if shuffle == "roll":
        _check(k, m)
        return _cached(k, m, dev)
    return _build(k, m, shuffle, generator).to(dev)


def _check_z(z: Tensor, schedule: PairSchedule) -> None:
    if z.dim() != 2 or z.shape[0] != schedule.k * schedule.m:
        raise SsrrError(
            f"expected representations of shape (K*M, D) = ({schedule.k * schedule.m}, D), got {tuple(z.shape)}"
        )


def relation_pairs(z: Tensor, schedule: PairSchedule, aggregation: str = "cat") -> Tensor:
    """The explicit aggregated pairs (P, 2D for cat else D), in Algorithm 1's order."""
    _check_z(z, schedule)
    return aggregate(z.index_select(0, schedule.left), z.index_select(0, schedule.right), aggregation)


def relation_logits(z: Tensor, head: nn.Module, schedule: PairSchedule) -> Tensor:
    """Logits (P,) of every pair, in the schedule's order, through the head's fast path.

    Heads with `pair_logits(z, left, right)` (all of `ssrr.models.heads`) compute what they can once per view
    (for the relation head with cat/sum/mean: the first Linear) and gather pairs afterwards; any other module is
    applied to `relation_pairs(z, schedule, head.aggregation)`.
    """
    _check_z(z, schedule)
    pair_logits = getattr(head, "pair_logits", None)
    if pair_logits is not None:
        return pair_logits(z, schedule.left, schedule.right, plan=schedule.plan)
    return head(relation_pairs(z, schedule, getattr(head, "aggregation", "cat"))).reshape(-1)


def pair_accuracy(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """(accuracy on the positives, accuracy on the negatives), as 0-dim float tensors in [0, 1], split by target.

    A pair is predicted positive when its logit is > 0 (sigmoid > 0.5). No host sync: the results stay on the
    logits' device."""
    with torch.no_grad():
        pred = logits.detach() > 0
        pos = targets > 0.5
        correct = pred == pos
        n_pos = pos.sum()
        n_neg = pos.numel() - n_pos
        acc_pos = (correct & pos).sum().float() / n_pos.clamp(min=1).float()
        acc_neg = (correct & ~pos).sum().float() / n_neg.clamp(min=1).float()
    return acc_pos, acc_neg
