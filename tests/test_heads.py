"""Relation heads: structure, per-view projection, the fused path against plain autograd, the ablation heads."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ssrr.errors import SsrrError
from ssrr.models.heads import AGGREGATIONS, HEADS, DotHead, EncoderDotHead, PairPlan, RelationHead, aggregate
from ssrr.relational import pair_schedule


def _random_pairs(n: int, p: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, n, (p,), generator=g), torch.randint(0, n, (p,), generator=g)


def test_registry() -> None:
    assert set(HEADS) == {"relation", "dot", "encoder-dot"}
    assert HEADS["relation"] is RelationHead


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_relation_head_layers(aggregation: str) -> None:
    head = RelationHead(64, aggregation)
    layers = [type(m) for m in head.children()]
    assert layers == [nn.Linear, nn.BatchNorm1d, nn.LeakyReLU, nn.Linear]
    assert head.linear1.in_features == (128 if aggregation == "cat" else 64)
    assert head.linear1.out_features == 256 and head.bn.num_features == 256
    assert head.linear2.out_features == 1
    assert head(torch.randn(10, head.in_features)).shape == (10,)


def test_unknown_aggregation() -> None:
    with pytest.raises(SsrrError, match="known: cat, sum, mean, max"):
        RelationHead(64, "min")
    with pytest.raises(SsrrError):
        aggregate(torch.zeros(1, 2), torch.zeros(1, 2), "prod")


@pytest.mark.parametrize("aggregation", ["cat", "sum", "mean"])
def test_project_is_the_first_linear(aggregation: str) -> None:
    torch.manual_seed(0)
    head = RelationHead(6, aggregation, hidden=5).double()
    z = torch.randn(7, 6, dtype=torch.float64)
    left, right = _random_pairs(7, 20)
    a, b = head.project(z)
    explicit = head.linear1(aggregate(z[left], z[right], aggregation))
    torch.testing.assert_close(a[left] + b[right], explicit)


def test_max_has_no_projection() -> None:
    head = RelationHead(4, "max")
    assert not head.has_projection
    with pytest.raises(SsrrError):
        head.project(torch.randn(3, 4))


@pytest.mark.parametrize("aggregation", ["cat", "sum", "mean", "max"])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("chunk", [None, 7, 1 << 40])
def test_fused_matches_plain_autograd(aggregation: str, train: bool, chunk: int | None) -> None:
    """Same logits, gradients (z and every parameter) and running statistics, float64, random pairs."""
    torch.manual_seed(1)
    n, p = 12, 50
    left, right = _random_pairs(n, p, seed=3)
    plain = RelationHead(5, aggregation, hidden=6, fused=False).double()
    with torch.no_grad():  # non-trivial BN affine and running statistics
        plain.bn.weight.uniform_(0.5, 1.5)
        plain.bn.bias.uniform_(-0.5, 0.5)
        plain.bn.running_mean.uniform_(-1, 1)
        plain.bn.running_var.uniform_(0.5, 2)
    fused = RelationHead(5, aggregation, hidden=6, fused=True).double()
    fused.load_state_dict(plain.state_dict())
    fused.chunk_rows = chunk
    plain.train(train)
    fused.train(train)
    z = torch.randn(n, 5, dtype=torch.float64)
    w = torch.randn(p, dtype=torch.float64)
    outs = []
    for head in (plain, fused):
        zz = z.clone().requires_grad_()
        logits = head.pair_logits(zz, left, right, plan=PairPlan(left, right, n))
        grads = torch.autograd.grad((logits * w).sum(), [zz, *head.parameters()])
        outs.append((logits.detach(), grads, head.bn.running_mean.clone(), head.bn.running_var.clone()))
    (l1, g1, rm1, rv1), (l2, g2, rm2, rv2) = outs
    torch.testing.assert_close(l2, l1, rtol=1e-10, atol=1e-12)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(rm2, rm1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rv2, rv1, rtol=1e-12, atol=1e-12)
    assert int(fused.bn.num_batches_tracked) == int(plain.bn.num_batches_tracked)


def test_fused_float32_close_to_float64() -> None:
    torch.manual_seed(0)
    schedule = pair_schedule(8, 16)
    head = RelationHead(32)
    z = torch.randn(8 * 16, 32)
    logits32 = head.pair_logits(z, schedule.left, schedule.right, plan=schedule.plan)
    head64 = RelationHead(32).double()
    head64.load_state_dict(head.state_dict())
    head64.bn.reset_running_stats()
    logits64 = head64.pair_logits(z.double(), schedule.left, schedule.right, plan=schedule.plan)
    assert logits32.dtype == torch.float32
    torch.testing.assert_close(logits32.double(), logits64, rtol=1e-4, atol=1e-4)


def test_fused_under_bf16_autocast_computes_in_float32() -> None:
    torch.manual_seed(0)
    schedule = pair_schedule(4, 8)
    head = RelationHead(16)
    z = torch.randn(32, 16)
    ref = head.pair_logits(z, schedule.left, schedule.right, plan=schedule.plan)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head.pair_logits(z.bfloat16(), schedule.left, schedule.right, plan=schedule.plan)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0.05, atol=0.05)  # only z was rounded to bf16


def test_dot_head() -> None:
    head = DotHead(3)
    z = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 2.0]])
    left, right = torch.tensor([0, 0, 1]), torch.tensor([1, 0, 1])
    expected = torch.tensor([4.0, 14.0, 5.0])
    torch.testing.assert_close(head.pair_logits(z, left, right), expected)
    torch.testing.assert_close(head(torch.cat([z[left], z[right]], dim=1)), expected)
    assert sum(p.numel() for p in head.parameters()) == 0
    with pytest.raises(SsrrError):
        DotHead(3, "sum")


def test_encoder_dot_head() -> None:
    torch.manual_seed(0)
    head = EncoderDotHead(8).double()
    assert [type(m) for m in head.encoder] == [nn.Linear, nn.BatchNorm1d, nn.LeakyReLU, nn.Linear]
    assert head.encoder[0].out_features == 256 and head.encoder[3].out_features == 64
    z = torch.randn(10, 8, dtype=torch.float64, requires_grad=True)
    left, right = _random_pairs(10, 30)
    out = head.pair_logits(z, left, right)
    e = head.encoder(z)  # train mode: BN statistics over the 10 views, as pair_logits
    torch.testing.assert_close(out, (e[left] * e[right]).sum(1))
    head.eval()  # in eval mode the explicit-pairs forward agrees exactly
    torch.testing.assert_close(head(torch.cat([z[left], z[right]], 1)), head.pair_logits(z, left, right))
    with pytest.raises(SsrrError):
        EncoderDotHead(8, "max")


@pytest.mark.parametrize("name", sorted(HEADS))
def test_heads_accept_aggregation_keyword(name: str) -> None:
    head = HEADS[name](64, aggregation="cat")
    assert head.aggregation == "cat"


def test_fused_cpu_threads_restored_and_same_values() -> None:
    torch.manual_seed(0)
    schedule = pair_schedule(4, 8)
    head = RelationHead(16).double()
    z = torch.randn(32, 16, dtype=torch.float64)
    before = torch.get_num_threads()
    results = []
    for threads in (1, None):
        head.cpu_threads = threads
        zz = z.clone().requires_grad_()
        logits = head.pair_logits(zz, schedule.left, schedule.right, plan=schedule.plan)
        logits.sum().backward()
        assert torch.get_num_threads() == before
        results.append((logits.detach(), zz.grad))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])
