"""The vectorised pair stage against the literal transcription of Algorithm 1 (`ssrr.bench.literal`):
same pairs, targets, logits, loss and gradients (float64, tight tolerance); collision-free negatives; counts;
accuracy split by target."""

from __future__ import annotations

import pytest
import torch

from ssrr.bench.literal import literal_aggregate, literal_relation_logits, literal_shuffle
from ssrr.errors import SsrrError
from ssrr.losses import bce_loss, focal_loss
from ssrr.models.heads import AGGREGATIONS, DotHead, EncoderDotHead, RelationHead
from ssrr.relational import (
    num_pairs,
    pair_accuracy,
    pair_schedule,
    relation_logits,
    relation_pairs,
    roll_shifts,
)

SIZES = [(2, 2), (2, 5), (3, 4), (4, 3), (5, 7)]


def _randomise_bn(head: RelationHead) -> None:
    with torch.no_grad():
        head.bn.weight.uniform_(0.5, 1.5)
        head.bn.bias.uniform_(-0.5, 0.5)


@pytest.mark.parametrize(("k", "m"), SIZES)
def test_schedule_order_targets_and_counts(k: int, m: int) -> None:
    s = pair_schedule(k, m)
    p = num_pairs(k, m)
    assert p == 2 * m * k * (k - 1) // 2
    assert s.num_pairs == p and s.left.shape == s.right.shape == s.targets.shape == (p,)
    # Algorithm 1's order: for i < j, a positive block of M rows, then a negative block of M rows.
    row = 0
    for i in range(k - 1):
        for j in range(i + 1, k):
            for target in (1.0, 0.0):
                blk = slice(row, row + m)
                assert torch.all(s.targets[blk] == target)
                assert s.left[blk].tolist() == [i * m + r for r in range(m)]
                right = s.right[blk]
                assert torch.all(right // m == j)
                if target == 1.0:
                    assert (right % m).tolist() == list(range(m))
                else:
                    assert sorted((right % m).tolist()) == list(range(m))  # a permutation of the batch
                row += m
    assert row == p
    assert int(s.targets.sum()) == p // 2


def test_count_at_paper_defaults() -> None:
    assert pair_schedule(32, 64).num_pairs == 63_488


@pytest.mark.parametrize(("k", "m"), [*SIZES, (32, 64), (40, 3)])
def test_negatives_are_collision_free(k: int, m: int) -> None:
    s = pair_schedule(k, m)
    neg = s.targets == 0
    assert torch.all(s.left[neg] % m != s.right[neg] % m)
    pos = s.targets == 1
    assert torch.all(s.left[pos] % m == s.right[pos] % m)


def test_roll_shifts_wrap_and_never_zero() -> None:
    assert roll_shifts(4, 3) == [1, 2, 1, 2, 1, 2]
    assert roll_shifts(3, 2) == [1, 1, 1]
    shifts = roll_shifts(32, 64)
    assert shifts[:3] == [1, 2, 3] and shifts[62] == 63 and shifts[63] == 1
    assert min(shifts) == 1 and max(shifts) == 63
    assert pair_schedule(4, 3).shifts.tolist() == [1, 2, 1, 2, 1, 2]


def test_random_shuffle_collision_free_and_seeded() -> None:
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = pair_schedule(6, 4, shuffle="random", generator=g1)
    b = pair_schedule(6, 4, shuffle="random", generator=g2)
    assert torch.equal(a.right, b.right)
    neg = a.targets == 0
    assert torch.all(a.left[neg] % 4 != a.right[neg] % 4)
    roll = pair_schedule(6, 4)
    assert torch.equal(a.right // 4, roll.right // 4) and torch.equal(a.left, roll.left)  # same views


@pytest.mark.parametrize(("k", "m"), [(1, 4), (0, 4), (3, 1), (3, 0)])
def test_too_small_raises(k: int, m: int) -> None:
    with pytest.raises(SsrrError):
        pair_schedule(k, m)


def test_unknown_shuffle_raises() -> None:
    with pytest.raises(SsrrError):
        pair_schedule(3, 3, shuffle="sort")


def test_schedule_is_cached() -> None:
    assert pair_schedule(3, 5) is pair_schedule(3, 5, "cpu")
    s = pair_schedule(3, 5)
    assert s.plan is s.plan


def test_wrong_z_shape_raises() -> None:
    with pytest.raises(SsrrError):
        relation_logits(torch.zeros(10, 4), RelationHead(4), pair_schedule(3, 3))


@pytest.mark.parametrize(("k", "m"), SIZES)
def test_literal_roll_is_the_per_sample_shuffle(k: int, m: int) -> None:
    z = torch.randn(k * m, 3, dtype=torch.float64)
    by_roll, t1 = literal_aggregate(z, k, "cat")
    by_sample, t2 = literal_aggregate(z, k, "cat", per_sample_shuffle=True)
    assert torch.equal(by_roll, by_sample) and torch.equal(t1, t2)
    assert torch.equal(literal_shuffle(z[:m], 1), torch.roll(z[:m], 1, 0))


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize(("k", "m"), SIZES)
def test_pairs_match_literal_exactly(aggregation: str, k: int, m: int) -> None:
    torch.manual_seed(k * 10 + m)
    z = torch.randn(k * m, 4, dtype=torch.float64)
    s = pair_schedule(k, m)
    pairs, targets = literal_aggregate(z, k, aggregation, per_sample_shuffle=True)
    assert torch.equal(relation_pairs(z, s, aggregation), pairs)
    assert torch.equal(s.targets, targets)


@pytest.mark.parametrize("loss_name", ["focal", "bce"])
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize(("k", "m"), SIZES)
@pytest.mark.parametrize("fused", [True, False])
def test_fast_path_matches_literal(aggregation: str, k: int, m: int, loss_name: str, fused: bool) -> None:
    """Logits, targets, loss and gradients w.r.t. z and every head parameter, float64, train mode."""
    torch.manual_seed(100 * k + m)
    d = 6
    loss_fn = focal_loss if loss_name == "focal" else bce_loss
    head = RelationHead(d, aggregation, hidden=16, fused=fused).double()
    _randomise_bn(head)
    head.chunk_rows = 5 if m % 2 else None  # several row blocks (the last one partial), or one
    reference = RelationHead(d, aggregation, hidden=16, fused=False).double()
    reference.load_state_dict(head.state_dict())
    z = torch.randn(k * m, d, dtype=torch.float64)
    s = pair_schedule(k, m)

    z_fast = z.clone().requires_grad_()
    logits = relation_logits(z_fast, head, s)
    loss = loss_fn(logits, s.targets)
    grads = torch.autograd.grad(loss, [z_fast, *head.parameters()])

    z_lit = z.clone().requires_grad_()
    lit_logits, lit_targets = literal_relation_logits(z_lit, reference, k, aggregation, per_sample_shuffle=True)
    lit_loss = loss_fn(lit_logits, lit_targets)
    lit_grads = torch.autograd.grad(lit_loss, [z_lit, *reference.parameters()])

    assert torch.equal(s.targets, lit_targets)
    torch.testing.assert_close(logits, lit_logits, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loss, lit_loss, rtol=1e-12, atol=1e-14)
    for g, lg in zip(grads, lit_grads, strict=True):
        torch.testing.assert_close(g, lg, rtol=1e-9, atol=1e-13)
    torch.testing.assert_close(head.bn.running_mean, reference.bn.running_mean, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(head.bn.running_var, reference.bn.running_var, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("aggregation", ["cat", "max"])
def test_fast_path_matches_literal_in_eval_mode(aggregation: str) -> None:
    torch.manual_seed(0)
    k, m, d = 3, 4, 5
    head = RelationHead(d, aggregation, hidden=8).double()
    _randomise_bn(head)
    with torch.no_grad():
        head.bn.running_mean.uniform_(-1, 1)
        head.bn.running_var.uniform_(0.5, 2)
    head.eval()
    z = torch.randn(k * m, d, dtype=torch.float64, requires_grad=True)
    s = pair_schedule(k, m)
    logits = relation_logits(z, head, s)
    g = torch.autograd.grad(focal_loss(logits, s.targets), z)[0]
    lit, targets = literal_relation_logits(z, head, k, aggregation)
    lit_g = torch.autograd.grad(focal_loss(lit, targets), z)[0]
    torch.testing.assert_close(logits, lit, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g, lit_g, rtol=1e-9, atol=1e-13)


def test_dot_head_matches_literal() -> None:
    torch.manual_seed(0)
    k, m = 4, 3
    z = torch.randn(k * m, 5, dtype=torch.float64, requires_grad=True)
    s = pair_schedule(k, m)
    logits = relation_logits(z, DotHead(5), s)
    lit, _ = literal_relation_logits(z, DotHead(5), k, "cat")
    torch.testing.assert_close(logits, lit)
    g1 = torch.autograd.grad(focal_loss(logits, s.targets), z)[0]
    g2 = torch.autograd.grad(focal_loss(lit, s.targets), z)[0]
    torch.testing.assert_close(g1, g2)


def test_encoder_dot_head_matches_per_view_reference() -> None:
    torch.manual_seed(0)
    k, m, d = 3, 4, 5
    head = EncoderDotHead(d, hidden=8, out_dim=4).double()
    z = torch.randn(k * m, d, dtype=torch.float64, requires_grad=True)
    s = pair_schedule(k, m)
    logits = relation_logits(z, head, s)
    # literal: encode every view once (one BN batch), then loop over the pairs as Algorithm 1
    e = head.encoder(z)
    ref = []
    shift = 1
    for i in range(k - 1):
        for j in range(i + 1, k):
            ei, ej = e[i * m : (i + 1) * m], e[j * m : (j + 1) * m]
            ref.append((ei * ej).sum(1))
            ref.append((ei * torch.roll(ej, shift, 0)).sum(1))
            shift = shift + 1 if shift + 1 < m else 1
    torch.testing.assert_close(logits, torch.cat(ref))
    head.eval()  # eval mode: also equal to the head applied to the literal concatenated pairs
    lit, _ = literal_relation_logits(z, head, k, "cat")
    torch.testing.assert_close(relation_logits(z, head, s), lit)


def test_pair_accuracy_split_by_target() -> None:
    # blocks alternate +,-,+,-: a split at half would mix them
    targets = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    logits = torch.tensor([2.0, -1.0, -3.0, -1.0, 0.5, 1.0, 4.0, -2.0])
    acc_pos, acc_neg = pair_accuracy(logits, targets)
    assert acc_pos.item() == pytest.approx(3 / 4)  # 2.0, 0.5, 1.0 right; -1.0 wrong
    assert acc_neg.item() == pytest.approx(3 / 4)  # -3, -1, -2 right; 4.0 wrong
    # a logit of exactly 0 (sigmoid 0.5) counts as a negative prediction
    acc_pos, acc_neg = pair_accuracy(torch.zeros(2), torch.tensor([1.0, 0.0]))
    assert acc_pos.item() == 0.0 and acc_neg.item() == 1.0


def test_pair_accuracy_on_schedule() -> None:
    s = pair_schedule(3, 4)
    acc_pos, acc_neg = pair_accuracy(s.targets * 2 - 1, s.targets)
    assert acc_pos.item() == 1.0 and acc_neg.item() == 1.0
    acc_pos, acc_neg = pair_accuracy(torch.ones(s.num_pairs), s.targets)
    assert acc_pos.item() == 1.0 and acc_neg.item() == 0.0


def test_float32_paper_size_close_to_literal() -> None:
    """K=16, M=64 (15,360 pairs, many row blocks) in float32: the fused stage agrees with the literal loop."""
    torch.manual_seed(0)
    k, m, d = 16, 64, 64
    head = RelationHead(d)
    reference = RelationHead(d, fused=False)
    reference.load_state_dict(head.state_dict())
    z = torch.randn(k * m, d)
    s = pair_schedule(k, m)
    z1 = z.clone().requires_grad_()
    loss = focal_loss(relation_logits(z1, head, s), s.targets)
    loss.backward()
    z2 = z.clone().requires_grad_()
    lit, targets = literal_relation_logits(z2, reference, k)
    lit_loss = focal_loss(lit, targets)
    lit_loss.backward()
    torch.testing.assert_close(loss, lit_loss, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-3, atol=1e-8)


@pytest.mark.parametrize("aggregation", ["cat", "mean"])
def test_random_shuffle_schedule_fused_matches_plain(aggregation: str) -> None:
    torch.manual_seed(0)
    k, m, d = 4, 6, 5
    s = pair_schedule(k, m, shuffle="random", generator=torch.Generator().manual_seed(1))
    head = RelationHead(d, aggregation, hidden=8).double()
    _randomise_bn(head)
    head.chunk_rows = 7
    plain = RelationHead(d, aggregation, hidden=8, fused=False).double()
    plain.load_state_dict(head.state_dict())
    z = torch.randn(k * m, d, dtype=torch.float64)
    results = []
    for h in (head, plain):
        zz = z.clone().requires_grad_()
        logits = relation_logits(zz, h, s)
        results.append((logits, torch.autograd.grad(focal_loss(logits, s.targets), [zz, *h.parameters()])))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-10, atol=1e-12)
    for g1, g2 in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-13)


def test_step_benchmarks_smoke() -> None:
    from ssrr.bench.step import bench_model_step, bench_relation_stage

    rel = bench_relation_stage(k=3, m=4, d=8, repeats=1, tune_allocator=False, threads=1)
    assert rel["pairs"] == 24 and rel["relation_speedup"] > 0 and rel["threads"] == 1
    step = bench_model_step("conv4", k=2, m=2, repeats=1, baseline_repeats=1, tune_allocator=False)
    for key in ("step_s", "views_per_s", "baseline_step_s", "step_speedup", "amp"):
        assert key in step
    assert step["views_per_s"] == pytest.approx(4 / step["step_s"])
    tried = step["baseline_settings"]["tried"]  # the public step in NCHW and channels_last: the faster counts
    assert [row["channels_last"] for row in tried] == [False, True]
    assert step["baseline_step_s"] == min(row["step_s"] for row in tried)
