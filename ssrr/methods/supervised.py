"""Supervised training (the upper bound): labels used, SGD 0.1 momentum 0.9, lr x0.1 at 50% and 75%.

Augmentation: random crop (pad side / 8) + flip, or with `--supervised-augment affine-erase` the authors'
STL-10 transform: the DALI flip recipe, then a random affine and random erasing in torch (`ssrr.augment`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ssrr.augment import AffineErase, affine_erase
from ssrr.config import RunConfig
from ssrr.declare import option
from ssrr.errors import SsrrError
from ssrr.methods.base import EpochContext, Method, StepOutput, register
from ssrr.models.backbones import Backbone
from ssrr.pipelines import recipes

if TYPE_CHECKING:
    from ssrr.pipelines.loader import Batch

SGD_LR = 0.1


@dataclass
class SupervisedOptions:
    """What the supervised upper bound trains on, and how its images are augmented."""

    labels: Literal["fine", "coarse"] = option(
        "fine", "supervised only: fine or coarse labels.", "method", flag="--labels"
    )
    augment: Literal["crop-flip", "affine-erase"] = option(
        "crop-flip",
        "supervised: crop-flip (pad side/8), or affine-erase (flip, random affine, random erasing: the authors' "
        "STL-10 transform).",
        "method",
        flag="--supervised-augment",
    )


@register
class Supervised(Method):
    name = "supervised"
    uses_labels = True
    default_lr = SGD_LR
    options_type = SupervisedOptions

    def __init__(self, config: RunConfig, backbone: Backbone, num_classes: int) -> None:
        super().__init__(config, backbone, num_classes)
        self.classifier = nn.Linear(backbone.feature_dim, num_classes)
        # affine-erase parameters: seeded by the run (a resumed run draws a new stream, as after any restart)
        self.augment_generator = torch.Generator().manual_seed(config.seed)
        self.normalisation: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    @classmethod
    def recipe(cls, config: RunConfig, image_size: tuple[int, int] | None = None) -> recipes.Recipe:
        if cls.read_options(config).augment == "affine-erase":
            return recipes.flip()  # then the affine and the erasing in `forward`
        return recipes.crop_flip(recipes.pad_for(image_size))  # pad side/8, the authors'

    def build_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=self.config.weight_decay)

    def build_scheduler(
        self, optimizer: torch.optim.Optimizer, steps_per_epoch: int, total_steps: Callable[[], int] | None = None
    ) -> torch.optim.lr_scheduler.LRScheduler:
        """The authors' steps: the rate x0.1 at 50% and 75% of the run (of its planned length under a budget,
        which can change while the run measures its pace)."""
        if total_steps is None:
            total = steps_per_epoch * self.config.epochs
            return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[total // 2, total * 3 // 4], gamma=0.1)
        planned = total_steps

        def factor(step: int) -> float:
            return 0.1 ** sum(step >= milestone for milestone in (planned() // 2, planned() * 3 // 4))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def on_epoch_start(self, context: EpochContext) -> None:
        """Remember the views' normalisation: the affine warps in pixel units (x * std + mean), black fill."""
        if context.mean is not None and context.std is not None:
            self.normalisation = (context.mean, context.std)

    def forward(self, batch: Batch) -> StepOutput:  # type: ignore[override]
        labels = batch.coarse if self.options.labels == "coarse" else batch.fine
        views = batch.views
        if self.options.augment == "affine-erase" and self.training:
            if self.normalisation is None:
                raise SsrrError("supervised affine-erase: the views' normalisation is unknown (no epoch started)")
            views = affine_erase(views, *self.normalisation, self.augment_generator, AffineErase())
        logits = self.classifier(self.backbone(views)).float()
        accuracy = (logits.argmax(1) == labels).float().mean()
        return StepOutput(F.cross_entropy(logits, labels), {"acc": accuracy})
