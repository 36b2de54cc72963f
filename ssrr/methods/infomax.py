"""Deep InfoMax (Hjelm et al. 2019): local mutual information between the representation and the first
block's feature maps (JSD estimator, 1x1-conv discriminator), plus prior matching (weight 0.1)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ssrr.losses import infomax_jsd_local, infomax_prior
from ssrr.methods.base import Method, StepOutput, register
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

    def __init__(self, config: RunConfig, backbone: nn.Module, num_classes: int) -> None:
        super().__init__(config, backbone, num_classes)
        channels, dim = backbone.local_channels, backbone.feature_dim
        self.local_encoder = nn.Sequential(nn.Conv2d(channels, EMBED, 1), nn.ReLU(), nn.Conv2d(EMBED, EMBED, 1))
        self.global_encoder = nn.Sequential(nn.Linear(dim, EMBED), nn.ReLU(), nn.Linear(EMBED, EMBED))
        self.prior_discriminator = nn.Sequential(
            nn.Linear(dim, 256), nn.ReLU(), nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 1)
        )

    @classmethod
    def recipe(cls, config: RunConfig) -> recipes.Recipe:
        return recipes.flip()

    def forward(self, batch: Batch) -> StepOutput:  # type: ignore[override]
        local_maps, z = self.backbone.forward_with_local(batch.views)
        local = self.local_encoder(local_maps).flatten(2)  # (M, E, h*w)
        glob = self.global_encoder(z)  # (M, E)
        scores = torch.einsum("me,nel->mnl", glob, local).float()  # global m against locations of image n
        positive = torch.eye(len(z), dtype=torch.bool, device=z.device)
        mi_loss = infomax_jsd_local(scores[positive], scores[~positive])
        prior = torch.rand_like(z, dtype=torch.float32)
        fake = _ReverseGradient.apply(torch.sigmoid(z.float()))
        prior_loss = infomax_prior(self.prior_discriminator(prior), self.prior_discriminator(fake))
        return StepOutput(mi_loss + PRIOR_WEIGHT * prior_loss, {"mi_loss": mi_loss.detach()})
