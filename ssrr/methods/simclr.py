"""SimCLR (Chen et al. 2020): two views, a projection head, NT-Xent with temperature 0.5 (the standard mean of
-log p by default; `--simclr-loss official` is the authors' code's -log of the mean p, docs/fidelity.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ssrr.config import RunConfig
from ssrr.declare import option
from ssrr.losses import SIMCLR_LOSSES
from ssrr.methods.base import Method, StepOutput, register
from ssrr.methods.heads import mlp_head
from ssrr.models.backbones import Backbone
from ssrr.pipelines import recipes

if TYPE_CHECKING:
    from ssrr.pipelines.loader import Batch

TEMPERATURE = 0.5


@dataclass
class SimclrOptions:
    """`--simclr-loss`: the standard NT-Xent, or the authors' code's form (docs/fidelity.md)."""

    loss: Literal["nt-xent", "official"] = option(
        "nt-xent",
        "simclr: nt-xent (mean of -log p), or official (the authors' code: -log of the mean p).",
        "method",
        flag="--simclr-loss",
    )


@register
class SimCLR(Method):
    name = "simclr"
    options_type = SimclrOptions

    def __init__(self, config: RunConfig, backbone: Backbone, num_classes: int) -> None:
        super().__init__(config, backbone, num_classes)
        self.projector = mlp_head(backbone.feature_dim, 64)
        self.loss_fn = SIMCLR_LOSSES[self.options.loss]

    @classmethod
    def recipe(cls, config: RunConfig, image_size: tuple[int, int] | None = None) -> recipes.Recipe:
        return recipes.simclr()

    @staticmethod
    def views_per_image(config: RunConfig) -> int:
        return 2

    def forward(self, batch: Batch) -> StepOutput:  # type: ignore[override]
        m = batch.index.shape[0]
        p = self.projector(self.backbone(batch.views)).float()
        return StepOutput(self.loss_fn(p[:m], p[m:], temperature=TEMPERATURE))
