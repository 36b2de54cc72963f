"""Deep InfoMax (Hjelm et al. 2019): local mutual information between the representation and the first
block's feature maps (JSD estimator), plus prior matching (weight 0.1); horizontal flips only, Adam 1e-4.

The local critic is chosen by `--infomax-critic`:

- `concat` (default, the authors' code): the representation y is broadcast over the locations of the feature
  maps M and concatenated with them, then 1x1 convolutions (D + C) -> 256 -> ReLU -> 256 -> ReLU -> 1 score
  every location; the positive pairs each image's y with its own M, the one negative per image with the next
  image's (the batch's maps rolled by one).
- `dot` (ssrr's earlier critic): encode-and-dot, 1x1-conv local encoder and MLP global encoder to 64, every
  representation scored against every location of every image (M x M x h x w scores, all other images as
  negatives), computed as one GEMM.

Prior matching (both critics): a discriminator D -> 512 -> 128 -> 1 on the raw representation tells it from
uniform [0, 1) samples. `--infomax-prior adversarial` (default) trains the encoder to fool it (gradient
reversal); `official` minimises the discriminator's loss for both, as the authors' code does, which pushes
the representations away from the prior (docs/fidelity.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn

from ssrr.config import RunConfig
from ssrr.declare import option
from ssrr.losses import infomax_jsd_all_pairs, infomax_jsd_local, infomax_prior
from ssrr.methods.base import Method, StepOutput, register
from ssrr.models.backbones import Backbone
from ssrr.pipelines import recipes

if TYPE_CHECKING:
    from ssrr.pipelines.loader import Batch

PRIOR_WEIGHT = 0.1
EMBED = 64  # the dot critic's embedding
CRITIC_HIDDEN = 256  # the concat critic's 1x1 convolutions


class _ReverseGradient(torch.autograd.Function):
    """Identity forward, negated gradient backward: one loss trains the prior discriminator to tell the
    representations from prior samples while it trains the encoder to fool it."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        return -grad


class ConcatCritic(nn.Module):
    """The authors' local critic: [M ; y broadcast] -> 1x1 conv (C + D) -> 256 -> ReLU -> 256 -> ReLU -> 1."""

    def __init__(self, channels: int, dim: int, hidden: int = CRITIC_HIDDEN) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels + dim, hidden, 1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(),
            nn.Conv2d(hidden, 1, 1),
        )

    def forward(self, local_maps: Tensor, z: Tensor) -> Tensor:
        """Scores (M, h * w) of each image's representation against every location of `local_maps`."""
        h, w = local_maps.shape[-2:]
        y = z[:, :, None, None].expand(-1, -1, h, w).to(local_maps.dtype)
        return self.net(torch.cat([local_maps, y], dim=1)).flatten(1)

    def loss(self, local_maps: Tensor, z: Tensor) -> Tensor:
        """JSD with one negative per image: its representation against the next image's maps."""
        negatives = torch.roll(local_maps, shifts=-1, dims=0)
        return infomax_jsd_local(self(local_maps, z), self(negatives, z))


class DotCritic(nn.Module):
    """Encode-and-dot: local 1x1 conv - ReLU - 1x1 conv, global Linear - ReLU - Linear, all images' locations as
    negatives. The last local layer is folded onto the global side, so one GEMM gives every score."""

    def __init__(self, channels: int, dim: int) -> None:
        super().__init__()
        self.local_hidden = nn.Sequential(nn.Conv2d(channels, EMBED, 1), nn.ReLU())
        self.local_out = nn.Conv2d(EMBED, EMBED, 1)
        self.global_encoder = nn.Sequential(nn.Linear(dim, EMBED), nn.ReLU(), nn.Linear(EMBED, EMBED))

    def scores(self, local_maps: Tensor, z: Tensor) -> Tensor:
        """(M, M, h * w): global representation m against location l of image n."""
        hidden = self.local_hidden(local_maps)
        n, embed, h, w = hidden.shape
        rows = hidden.permute(0, 2, 3, 1).reshape(n * h * w, embed)  # (M * h * w, E); a view if channels_last
        last = self.local_out
        glob = self.global_encoder(z)  # (M, E)
        # score = glob . (W h + b) = (glob W) . h + glob . b: the last local layer is applied to the M global
        # vectors instead of the M * h * w local ones (same value).
        bias = (glob @ last.bias)[:, None]  # type: ignore[operator]  # Conv2d.bias is Optional; set here
        return torch.addmm(bias, glob @ last.weight.flatten(1), rows.T).view(n, n, h * w)

    def loss(self, local_maps: Tensor, z: Tensor) -> Tensor:
        return infomax_jsd_all_pairs(self.scores(local_maps, z))


@dataclass
class InfomaxOptions:
    """`--infomax-prior` and `--infomax-critic`: the authors' forms one option away (docs/fidelity.md)."""

    prior: Literal["adversarial", "official"] = option(
        "adversarial",
        "infomax: adversarial (the encoder fools the prior critic), or official (the authors' code: both "
        "minimise the critic's loss).",
        "method",
        flag="--infomax-prior",
    )
    critic: Literal["concat", "dot"] = option(
        "concat",
        "infomax: concat (the authors' concatenate-and-convolve critic) or dot (encode-and-dot).",
        "method",
        flag="--infomax-critic",
    )


@register
class DeepInfoMax(Method):
    name = "infomax"
    default_lr = 1e-4  # Adam, the paper's setting
    options_type = InfomaxOptions

    def __init__(self, config: RunConfig, backbone: Backbone, num_classes: int) -> None:
        super().__init__(config, backbone, num_classes)
        channels, dim = backbone.local_channels, backbone.feature_dim
        critic = ConcatCritic if self.options.critic == "concat" else DotCritic
        self.critic = critic(channels, dim)
        self.prior_discriminator = nn.Sequential(
            nn.Linear(dim, 512), nn.ReLU(), nn.Linear(512, 128), nn.ReLU(), nn.Linear(128, 1)
        )

    @classmethod
    def recipe(cls, config: RunConfig, image_size: tuple[int, int] | None = None) -> recipes.Recipe:
        return recipes.flip()

    def forward(self, batch: Batch) -> StepOutput:  # type: ignore[override]
        local_maps, z = self.backbone.forward_with_local(batch.views)
        mi_loss = self.critic.loss(local_maps, z)
        prior = torch.rand_like(z, dtype=torch.float32)
        fake = z.float() if self.options.prior == "official" else _ReverseGradient.apply(z.float())
        prior_loss = infomax_prior(self.prior_discriminator(prior), self.prior_discriminator(fake))
        return StepOutput(mi_loss + PRIOR_WEIGHT * prior_loss, {"mi_loss": mi_loss.detach()})
