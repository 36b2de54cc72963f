"""Losses on hand-checkable values, against straightforward references, and their signs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ssrr.losses import (
    LOSS_FUNCTIONS,
    bce_loss,
    focal_loss,
    infomax_jsd_all_pairs,
    infomax_jsd_local,
    infomax_prior,
    infomax_prior_encoder,
    nt_xent,
    nt_xent_official,
    rotation_targets,
    weighted_cross_entropy,
)

LN2, LN3, LN4 = math.log(2.0), math.log(3.0), math.log(4.0)


def test_registry() -> None:
    assert set(LOSS_FUNCTIONS) == {"focal", "bce"}
    assert LOSS_FUNCTIONS["focal"] is focal_loss and LOSS_FUNCTIONS["bce"] is bce_loss


def test_focal_loss_hand_values() -> None:
    # logit 0: p = 0.5; t = 1: alpha_t 0.5, (1 - p_t)^2 = 0.25, -log p_t = ln 2.
    assert focal_loss(torch.tensor([0.0]), torch.tensor([1.0])).item() == pytest.approx(0.5 * 0.25 * LN2)
    # logit ln 3: p = 0.75. t = 1: 0.5 * 0.25^2 * -ln 0.75; t = 0: p_t = 0.25, 0.5 * 0.75^2 * ln 4.
    logits = torch.tensor([LN3, LN3])
    targets = torch.tensor([1.0, 0.0])
    expected = (0.5 * 0.0625 * -math.log(0.75) + 0.5 * 0.5625 * LN4) / 2
    assert focal_loss(logits, targets).item() == pytest.approx(expected, rel=1e-6)
    # alpha weights positives by alpha, negatives by 1 - alpha.
    assert focal_loss(torch.tensor([0.0]), torch.tensor([1.0]), alpha=0.25).item() == pytest.approx(0.25 * 0.25 * LN2)
    assert focal_loss(torch.tensor([0.0]), torch.tensor([0.0]), alpha=0.25).item() == pytest.approx(0.75 * 0.25 * LN2)
    # gamma = 0 and alpha = 0.5 is half the BCE.
    x, t = torch.randn(50), (torch.rand(50) > 0.5).float()
    assert focal_loss(x, t, gamma=0.0).item() == pytest.approx(0.5 * bce_loss(x, t).item(), rel=1e-6)


def test_focal_loss_matches_probability_form() -> None:
    torch.manual_seed(0)
    x = torch.randn(100, dtype=torch.float64) * 3
    t = (torch.rand(100) > 0.5).double()
    p = torch.sigmoid(x)
    p_t = torch.where(t == 1, p, 1 - p)
    alpha_t = torch.where(t == 1, 0.5, 0.5)
    ref = (-alpha_t * (1 - p_t) ** 2 * torch.log(p_t)).mean()
    torch.testing.assert_close(focal_loss(x, t).double(), ref, rtol=1e-6, atol=1e-8)


def test_focal_loss_stable_for_extreme_logits() -> None:
    x = torch.tensor([100.0, -100.0, 100.0, -100.0], requires_grad=True)
    t = torch.tensor([0.0, 1.0, 1.0, 0.0])
    loss = focal_loss(x, t)
    # the two wrong ones: 0.5 * 1 * 100 each; the two right ones: ~0.
    assert loss.item() == pytest.approx((50.0 + 50.0) / 4, rel=1e-5)
    loss.backward()
    assert torch.isfinite(x.grad).all()


def test_bce_hand_value() -> None:
    assert bce_loss(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.0])).item() == pytest.approx(LN2)
    assert bce_loss(torch.tensor([LN3]), torch.tensor([1.0])).item() == pytest.approx(-math.log(0.75), rel=1e-6)


def test_losses_take_bf16_logits() -> None:
    x = torch.randn(20).bfloat16()
    t = (torch.rand(20) > 0.5).float()
    assert focal_loss(x, t).dtype == torch.float32
    assert bce_loss(x, t).dtype == torch.float32


def _nt_xent_loop(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    z = torch.cat([z1, z2]).double()
    n2 = z.shape[0]
    n = n2 // 2
    total = torch.zeros((), dtype=torch.float64)
    for a in range(n2):
        pos = (a + n) % n2
        sims = []
        for b in range(n2):
            if b != a:
                sims.append(F.cosine_similarity(z[a], z[b], dim=0) / temperature)
        num = F.cosine_similarity(z[a], z[pos], dim=0) / temperature
        total = total - (num - torch.logsumexp(torch.stack(sims), 0))
    return total / n2


def test_nt_xent_matches_loop_reference() -> None:
    torch.manual_seed(0)
    z1, z2 = torch.randn(5, 7), torch.randn(5, 7)
    for temperature in (0.5, 0.1):
        torch.testing.assert_close(nt_xent(z1, z2, temperature).double(), _nt_xent_loop(z1, z2, temperature))


def test_nt_xent_lower_for_aligned_views() -> None:
    torch.manual_seed(0)
    z1 = torch.randn(8, 16)
    assert nt_xent(z1, z1 + 0.01 * torch.randn(8, 16)) < nt_xent(z1, torch.randn(8, 16))


def _positive_probabilities(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """p_a of every anchor by a plain loop: exp(positive) / sum over the others of exp(similarity)."""
    z = torch.cat([z1, z2]).double()
    n2 = z.shape[0]
    probabilities = []
    for a in range(n2):
        sims = torch.stack([F.cosine_similarity(z[a], z[b], dim=0) / temperature for b in range(n2) if b != a])
        positive = F.cosine_similarity(z[a], z[(a + n2 // 2) % n2], dim=0) / temperature
        probabilities.append(positive.exp() / sims.exp().sum())
    return torch.stack(probabilities)


def test_the_official_simclr_loss_is_minus_log_of_the_mean_probability() -> None:
    torch.manual_seed(1)
    z1, z2 = torch.randn(6, 5), torch.randn(6, 5)
    p = _positive_probabilities(z1, z2, 0.5)
    torch.testing.assert_close(nt_xent_official(z1, z2, 0.5).double(), -p.mean().log())
    torch.testing.assert_close(nt_xent(z1, z2, 0.5).double(), -p.log().mean())  # the standard form, for contrast
    assert float(nt_xent_official(z1, z2)) < float(nt_xent(z1, z2))  # Jensen: strictly, the p_a differ


def test_rotation_targets() -> None:
    assert rotation_targets(3).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert rotation_targets(2).dtype == torch.int64


def test_weighted_cross_entropy_hand_value() -> None:
    logits = torch.tensor([[0.0, 0.0], [0.0, LN3]])  # p(y=1) = 0.5 and 0.75
    targets = torch.tensor([0, 1])
    weights = torch.tensor([1.0, 3.0])
    expected = (1.0 * LN2 + 3.0 * -math.log(0.75)) / (1.0 + 3.0)
    assert weighted_cross_entropy(logits, targets, weights).item() == pytest.approx(expected, rel=1e-6)
    unweighted = weighted_cross_entropy(logits, targets, torch.ones(2)).item()
    assert unweighted == pytest.approx((LN2 - math.log(0.75)) / 2, rel=1e-6)


def test_infomax_jsd_local_values_and_sign() -> None:
    zeros = torch.zeros(4, 1, 3, 3)
    assert infomax_jsd_local(zeros, zeros).item() == pytest.approx(2 * LN2)
    good = infomax_jsd_local(torch.full((4, 1, 3, 3), 5.0), torch.full((4, 1, 3, 3), -5.0))
    bad = infomax_jsd_local(torch.full((4, 1, 3, 3), -5.0), torch.full((4, 1, 3, 3), 5.0))
    assert good < 2 * LN2 < bad
    assert good.item() == pytest.approx(2 * math.log1p(math.exp(-5.0)), rel=1e-6)
    # E_pos[-softplus(-s)] - E_neg[softplus(s)] is the MI estimate; the loss is its negative
    pos, neg = torch.randn(10), torch.randn(10)
    mi = (-F.softplus(-pos)).mean() - F.softplus(neg).mean()
    torch.testing.assert_close(infomax_jsd_local(pos, neg), -mi)


def test_infomax_jsd_all_pairs_is_the_masked_jsd() -> None:
    """Positives on the image diagonal, every other (image, location) a negative: the same value as gathering
    them, and the same gradients."""
    scores = torch.randn(5, 5, 7, dtype=torch.float64, requires_grad=True)
    positive = torch.eye(5, dtype=torch.bool)
    masked = infomax_jsd_local(scores[positive], scores[~positive])
    fast = infomax_jsd_all_pairs(scores)
    torch.testing.assert_close(fast.double(), masked.double())
    (grad_fast,) = torch.autograd.grad(fast, scores)
    (grad_masked,) = torch.autograd.grad(masked, scores)
    torch.testing.assert_close(grad_fast.double(), grad_masked.double(), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="M >= 2"):
        infomax_jsd_all_pairs(torch.zeros(3, 2, 4))


def test_infomax_prior_values_and_sign() -> None:
    zeros = torch.zeros(6, 1)
    assert infomax_prior(zeros, zeros).item() == pytest.approx(2 * LN2)
    # discriminator right (prior samples high, representations low): lower loss
    right = infomax_prior(torch.full((6, 1), 4.0), torch.full((6, 1), -4.0))
    wrong = infomax_prior(torch.full((6, 1), -4.0), torch.full((6, 1), 4.0))
    assert right < 2 * LN2 < wrong
    # -(E log D(real) + E log(1 - D(fake))) with D = sigmoid
    real, fake = torch.randn(8), torch.randn(8)
    ref = -(torch.log(torch.sigmoid(real)).mean() + torch.log(1 - torch.sigmoid(fake)).mean())
    torch.testing.assert_close(infomax_prior(real, fake), ref)
    # the encoder's side prefers representations the discriminator takes for prior samples
    assert infomax_prior_encoder(torch.full((3,), 4.0)) < infomax_prior_encoder(torch.full((3,), -4.0))
