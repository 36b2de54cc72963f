"""Relational reasoning (the paper's method): K views, pairs of views scored by a relation head."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ssrr.config import RunConfig
from ssrr.errors import SsrrError
from ssrr.losses import LOSS_FUNCTIONS
from ssrr.methods.base import Method, StepOutput, register
from ssrr.models.backbones import Backbone
from ssrr.models.external import is_external
from ssrr.models.heads import HEADS
from ssrr.pipelines import recipes
from ssrr.relational import PairSchedule, pair_accuracy, pair_schedule, relation_logits

if TYPE_CHECKING:
    from ssrr.pipelines.loader import Batch


@register
class Relational(Method):
    """Algorithm 1: aggregate every pair of the K views, positives (same image) against negatives
    (a collision-free shuffle), score them with the relation head, focal/BCE loss."""

    name = "relational"
    default_batch = 64  # M, the paper's (the baselines: 128)
    external_backbone_lr = 1e-4  # Adam, torchvision and timm backbones (see default_rate)

    def __init__(self, config: RunConfig, backbone: Backbone, num_classes: int) -> None:
        super().__init__(config, backbone, num_classes)
        if config.head not in HEADS:
            raise SsrrError(f"unknown head {config.head!r} (known: {', '.join(HEADS)})")
        if config.loss not in LOSS_FUNCTIONS:
            raise SsrrError(f"unknown loss {config.loss!r} (known: {', '.join(LOSS_FUNCTIONS)})")
        self.head = HEADS[config.head](backbone.feature_dim, aggregation=config.aggregation)
        self.loss_fn = LOSS_FUNCTIONS[config.loss]
        self._schedules: dict[tuple[int, int, str], PairSchedule] = {}

    @classmethod
    def default_rate(cls, config: RunConfig) -> float:
        """Adam 1e-3, the paper's, for the paper's backbones; 1e-4 for torchvision and timm ones. Adam moves
        every weight by about the rate each step, a large part of a deep network's initial weights (std 0.02 in
        ResNet-18's last convolutions), so at 1e-3 the first steps, taken through a random relation head, undo
        the random features before any are learnt: one epoch of 96-px views of 1,000 224-px images, validation
        seeds 1-3, linear top-1 28.9% at 1e-3, 32.0% at 1e-4, random weights 29.5% (docs/benchmarks.md)."""
        return cls.external_backbone_lr if is_external(config.backbone) else cls.default_lr

    @classmethod
    def recipe(cls, config: RunConfig, image_size: tuple[int, int] | None = None) -> recipes.Recipe:
        return recipes.relational(config.k, config.crop_min)

    @staticmethod
    def views_per_image(config: RunConfig) -> int:
        return config.k

    def pairs_per_step(self, batch_size: int) -> int:
        k = self.config.k
        return batch_size * k * (k - 1)

    def schedule(self, k: int, m: int, device: torch.device) -> PairSchedule:
        key = (k, m, str(device))
        if key not in self._schedules:
            self._schedules[key] = pair_schedule(k, m, device)
        return self._schedules[key]

    def forward(self, batch: Batch) -> StepOutput:  # type: ignore[override]
        m = batch.index.shape[0]
        k = batch.views.shape[0] // m
        z = self.backbone(batch.views)
        schedule = self.schedule(k, m, z.device)
        logits = relation_logits(z, self.head, schedule).float()
        loss = self.loss_fn(logits, schedule.targets)
        acc_pos, acc_neg = pair_accuracy(logits.detach(), schedule.targets)
        return StepOutput(loss, {"acc_pos": acc_pos, "acc_neg": acc_neg})
