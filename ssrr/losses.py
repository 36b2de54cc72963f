"""Loss functions, pure: tensors in, a scalar tensor out (no modules, no state).

Relational reasoning: `focal_loss` (the authors' default) and `bce_loss`, both on pair logits; registry
`LOSS_FUNCTIONS = {"focal": focal_loss, "bce": bce_loss}`. Baselines: `nt_xent` (SimCLR), `rotation_targets`
(RotationNet), `weighted_cross_entropy` (DeepCluster), `infomax_jsd_local` (and `infomax_jsd_all_pairs`),
`infomax_prior` and `infomax_prior_encoder` (Deep InfoMax).

All losses compute in float32 whatever the input dtype (bf16 logits from autocast are upcast first).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "LOSS_FUNCTIONS",
    "SIMCLR_LOSSES",
    "bce_loss",
    "focal_loss",
    "infomax_jsd_all_pairs",
    "infomax_jsd_local",
    "infomax_prior",
    "infomax_prior_encoder",
    "nt_xent",
    "nt_xent_official",
    "rotation_targets",
    "weighted_cross_entropy",
]


def focal_loss(logits: Tensor, targets: Tensor, gamma: float = 2.0, alpha: float = 0.5) -> Tensor:
    """Sigmoid focal loss (Lin et al. 2017), mean over the pairs, as the authors' implementation.

    With p = sigmoid(logit), p_t = p if t = 1 else 1 - p, alpha_t = alpha if t = 1 else 1 - alpha:
    loss = mean( -alpha_t * (1 - p_t)^gamma * log(p_t) ). The authors' `FocalLoss` computes exactly this
    (BCE-with-logits times the modulating factor times the alpha weight, then `torch.mean`), with no extra
    scale factor: with alpha = 0.5 it is half a gamma-modulated BCE. Targets may be soft (in [0, 1]); then
    p_t, alpha_t and the cross-entropy are the same linear mixtures as in the authors' code.

    Numerically stable from the logits: log(p_t) = -BCE-with-logits(logit, t) (log-sigmoid inside), and
    1 - p_t = t * sigmoid(-logit) + (1 - t) * sigmoid(logit) (no 1 - p cancellation for confident logits).
    """
    x = logits.float()
    t = targets.to(x.dtype)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")  # -log(p_t), stable
    one_minus_pt = t * torch.sigmoid(-x) + (1.0 - t) * torch.sigmoid(x)
    modulating = one_minus_pt.pow(gamma) if gamma else torch.ones_like(x)
    alpha_t = t * alpha + (1.0 - t) * (1.0 - alpha)
    return (alpha_t * modulating * ce).mean()


def bce_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Binary cross-entropy on logits, mean over the pairs (Algorithm 1, line 17)."""
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float())


LOSS_FUNCTIONS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"focal": focal_loss, "bce": bce_loss}


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.5) -> Tensor:
    """SimCLR's NT-Xent. z1, z2: (N, E), row n of each is a view of image n.

    The 2N projections are L2-normalised; for every anchor a among the 2N, logits are the cosine similarities
    to the other 2N - 1 (itself excluded) divided by the temperature, and the loss is -log softmax at its
    positive (the other view of the same image). Mean over the 2N anchors.
    """
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2], dim=0).float(), dim=1)
    sim = (z @ z.t()) / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, positives)


def nt_xent_official(z1: Tensor, z2: Tensor, temperature: float = 0.5) -> Tensor:
    """SimCLR's loss in the form of the authors' code: -log of the MEAN probability of the positive.

    p_a is the same softmax probability of anchor a's positive as in `nt_xent` (cosine similarities over the
    temperature, the anchor itself excluded); `nt_xent` is mean_a(-log p_a), this is -log(mean_a p_a), which
    is never larger (Jensen) and weighs the anchors differently (the authors report about a point of
    CIFAR-10 accuracy between the two)."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2], dim=0).float(), dim=1)
    sim = (z @ z.t()) / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    log_p = sim.log_softmax(dim=1).gather(1, positives[:, None]).squeeze(1)
    return -(torch.logsumexp(log_p, dim=0) - math.log(2 * n))


SIMCLR_LOSSES: dict[str, Callable[..., Tensor]] = {"nt-xent": nt_xent, "official": nt_xent_official}


def rotation_targets(m: int, device: torch.device | str | None = None) -> Tensor:
    """RotationNet labels for 4 rotated copies stacked view-major: rows r*M .. (r+1)*M - 1 have label r
    (r = 0, 1, 2, 3 for 0, 90, 180, 270 degrees). (4M,) int64."""
    return torch.arange(4, device=device).repeat_interleave(m)


def weighted_cross_entropy(logits: Tensor, targets: Tensor, class_weights: Tensor) -> Tensor:
    """Cross-entropy with per-class weights (DeepCluster: inverse cluster frequency).

    PyTorch's weighted mean: sum_n w[y_n] * CE_n / sum_n w[y_n]."""
    return F.cross_entropy(logits.float(), targets, weight=class_weights.float())


def infomax_jsd_local(local_scores_pos: Tensor, local_scores_neg: Tensor) -> Tensor:
    """Deep InfoMax's JSD mutual-information loss from discriminator scores (logits).

    MI estimate = E_pos[-softplus(-s)] - E_neg[softplus(s)] (means over every element: images and locations);
    the loss is its negative, E_neg[softplus(s)] + E_pos[softplus(-s)]. Lower when positives score high and
    negatives low; minimised by both the encoder and the discriminator."""
    e_pos = -F.softplus(-local_scores_pos.float()).mean()
    e_neg = F.softplus(local_scores_neg.float()).mean()
    return -(e_pos - e_neg)


def infomax_jsd_all_pairs(scores: Tensor) -> Tensor:
    """`infomax_jsd_local` over every (global, image, location) triple of a batch, without gathering.

    scores: (M, M, L) logits, scores[m, n, l] = global representation of image m against location l of image
    n; positives are n == m (M * L of them), negatives the rest (M * (M - 1) * L). The negatives' softplus sum
    is the sum over all scores less the positives', so no masked copies of the (large) score tensor are made."""
    m, n, locations = scores.shape
    if m != n or m < 2:
        raise ValueError(f"scores must be (M, M, L) with M >= 2, got {tuple(scores.shape)}")
    scores = scores.float()
    positives = scores.diagonal(dim1=0, dim2=1)  # (L, M), a view
    e_pos = -F.softplus(-positives).mean()
    e_neg = (F.softplus(scores).sum() - F.softplus(positives).sum()) / (m * (m - 1) * locations)
    return -(e_pos - e_neg)


def infomax_prior(d_prior_real: Tensor, d_prior_fake: Tensor) -> Tensor:
    """Deep InfoMax's prior-matching term, the DISCRIMINATOR's loss, from logits.

    d_prior_real: discriminator logits on samples of the prior (uniform [0, 1)); d_prior_fake: logits on the
    encoder's representations. loss = -(E[log D(real)] + E[log(1 - D(fake))]) with D = sigmoid, i.e.
    E[softplus(-real)] + E[softplus(fake)]. Lower when the discriminator tells them apart. The encoder plays
    against it (`infomax_prior_encoder`, or this loss through a gradient reversal); note the authors' code
    minimises this one loss for both, which pushes representations away from the prior."""
    return F.softplus(-d_prior_real.float()).mean() + F.softplus(d_prior_fake.float()).mean()


def infomax_prior_encoder(d_prior_fake: Tensor) -> Tensor:
    """The encoder's side of the prior-matching game (non-saturating): -E[log D(fake)] = E[softplus(-fake)].
    Lower when the discriminator takes the representations for prior samples."""
    return F.softplus(-d_prior_fake.float()).mean()
