"""RotationNet (Gidaris et al. 2018): predict which of the 4 rotations (0/90/180/270) an image shows."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import nn

from ssrr.config import RunConfig
from ssrr.losses import rotation_targets
from ssrr.methods.base import Method, StepOutput, register
from ssrr.models.backbones import Backbone
from ssrr.pipelines import recipes

if TYPE_CHECKING:
    from ssrr.pipelines.loader import Batch


@register
class RotationNet(Method):
    name = "rotation"

    def __init__(self, config: RunConfig, backbone: Backbone, num_classes: int) -> None:
        super().__init__(config, backbone, num_classes)
        self.classifier = nn.Linear(backbone.feature_dim, 4)

    @classmethod
    def recipe(cls, config: RunConfig, image_size: tuple[int, int] | None = None) -> recipes.Recipe:
        return recipes.rotation(recipes.pad_for(image_size))  # crop (pad side/8) + flip, then r * 90 degrees

    @staticmethod
    def views_per_image(config: RunConfig) -> int:
        return 4

    def forward(self, batch: Batch) -> StepOutput:  # type: ignore[override]
        m = batch.index.shape[0]
        logits = self.classifier(self.backbone(batch.views)).float()
        targets = rotation_targets(m, logits.device)
        accuracy = (logits.argmax(1) == targets).float().mean()
        return StepOutput(F.cross_entropy(logits, targets), {"acc": accuracy})
