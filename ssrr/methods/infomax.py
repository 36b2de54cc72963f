"""Deep InfoMax (Hjelm et al. 2019): local mutual information between the representation and the first
block's feature maps (JSD estimator, 1x1-conv discriminator), plus prior matching (weight 0.1); horizontal
flips only, Adam 1e-4 (the paper's settings).

Every representation in the batch is scored against every location of every image's feature maps (the
other images' locations are the negatives): M x M x h x w scores a step, 4.2M for M=64 at 32x32, which makes
this the costliest method per view (docs/benchmarks.md) though not per image."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ssrr.losses import infomax_jsd_all_pairs, infomax_prior
from ssrr.methods.base import Method, StepOutput, register
from ssrr.models.backbones import Backbone
from ssrr.pipelines import recipes
from ssrr.train.config import RunConfig

if TYPE_CHECKING:
    from ssrr.pipelines.loader import Batch

PRIOR_WEIGHT = 0.1
EMBED = 64


class _ReverseGradient(torch.autograd.Function):
    """Identity forward, negated gradient backward: one loss trains the prior discriminator to tell the
    representations from prior samples while it trains the encoder to fool it."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        return -grad


@register
class DeepInfoMax(Method):
    name = "infomax"
    default_lr = 1e-4  # Adam, the paper's setting

    def __init__(self, config: RunConfig, backbone: Backbone, num_classes: int) -> None:
        super().__init__(config, backbone, num_classes)
        channels, dim = backbone.local_channels, backbone.feature_dim
        # The local encoder, 1x1 conv - ReLU - 1x1 conv, kept in two parts: its last (linear) layer is folded
        # onto the global side in `forward`.
        self.local_hidden = nn.Sequential(nn.Conv2d(channels, EMBED, 1), nn.ReLU())
        self.local_out = nn.Conv2d(EMBED, EMBED, 1)
        self.global_encoder = nn.Sequential(nn.Linear(dim, EMBED), nn.ReLU(), nn.Linear(EMBED, EMBED))
        self.prior_discriminator = nn.Sequential(
            nn.Linear(dim, 256), nn.ReLU(), nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 1)
        )

    @classmethod
    def recipe(cls, config: RunConfig) -> recipes.Recipe:
        return recipes.flip()

    def forward(self, batch: Batch) -> StepOutput:  # type: ignore[override]
        local_maps, z = self.backbone.forward_with_local(batch.views)
        hidden = self.local_hidden(local_maps)
        n, embed, h, w = hidden.shape
        rows = hidden.permute(0, 2, 3, 1).reshape(n * h * w, embed)  # (M * h * w, E); a view if channels_last
        last = self.local_out
        glob = self.global_encoder(z)  # (M, E)
        # score = glob . (W h + b) = (glob W) . h + glob . b: the last local layer is applied to the M global
        # vectors instead of the M * h * w local ones (same value), then one GEMM scores every global
        # representation against every location of every image: (M, M, h * w).
        bias = (glob @ last.bias)[:, None]  # type: ignore[operator]  # Conv2d.bias is Optional; set here
        scores = torch.addmm(bias, glob @ last.weight.flatten(1), rows.T).view(n, n, h * w)
        mi_loss = infomax_jsd_all_pairs(scores)
        prior = torch.rand_like(z, dtype=torch.float32)
        fake = _ReverseGradient.apply(torch.sigmoid(z.float()))
        prior_loss = infomax_prior(self.prior_discriminator(prior), self.prior_discriminator(fake))
        return StepOutput(mi_loss + PRIOR_WEIGHT * prior_loss, {"mi_loss": mi_loss.detach()})
