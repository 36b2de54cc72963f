"""DeepCluster (Caron et al. 2018): each epoch, cluster the features, then learn to predict the clusters."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ssrr.cluster import inverse_frequency_weights, kmeans, pca_whiten
from ssrr.errors import SsrrError
from ssrr.methods.base import EpochContext, Method, StepOutput, register
from ssrr.methods.heads import mlp_head
from ssrr.models.backbones import Backbone
from ssrr.pipelines import recipes
from ssrr.train.config import RunConfig

if TYPE_CHECKING:
    from ssrr.pipelines.loader import Batch

CLUSTERS_PER_CLASS = 10
PCA_DIM = 32


@register
class DeepCluster(Method):
    name = "deepcluster"

    def __init__(self, config: RunConfig, backbone: Backbone, num_classes: int) -> None:
        super().__init__(config, backbone, num_classes)
        self.k = CLUSTERS_PER_CLASS * num_classes
        self.head = mlp_head(backbone.feature_dim, self.k)
        self.register_buffer("assignments", torch.zeros(0, dtype=torch.long), persistent=False)
        self.register_buffer("weights", torch.ones(self.k), persistent=False)

    @classmethod
    def recipe(cls, config: RunConfig) -> recipes.Recipe:
        return recipes.crop_flip()

    @classmethod
    def check_data(cls, config: RunConfig, train_samples: int, num_classes: int) -> None:
        _check_enough_images(train_samples, num_classes)

    @torch.no_grad()
    def on_epoch_start(self, context: EpochContext) -> None:
        """Features of the whole train split (no augmentation), PCA-whitened and L2-normalised, k-means."""
        loader = context.make_loader(recipes.evaluation(), training=False)
        was_training = self.backbone.training
        self.backbone.eval()
        features, indices = [], []
        for batch in loader.epoch(0):
            features.append(context.execution.forward(self.backbone, batch.views)[batch.valid])
            indices.append(batch.index[batch.valid])
        self.backbone.train(was_training)
        z = torch.cat(features)
        index = torch.cat(indices)
        _check_enough_images(len(z), self.num_classes)  # again: corrupt samples may have been skipped
        z = F.normalize(pca_whiten(z, min(PCA_DIM, z.shape[1])), dim=1)
        generator = torch.Generator().manual_seed(self.config.seed * 1000 + context.epoch)
        _, clusters = kmeans(z, self.k, generator=generator)
        assignments = torch.empty(int(index.max()) + 1, dtype=torch.long, device=z.device)
        assignments[index] = clusters
        self.assignments = assignments
        self.weights = inverse_frequency_weights(clusters, self.k)
        last = self.head[-1]  # a fresh classifier for the new, arbitrarily numbered clusters
        assert isinstance(last, nn.Linear)
        last.reset_parameters()

    def forward(self, batch: Batch) -> StepOutput:  # type: ignore[override]
        targets = self.assignments[batch.index]
        logits = self.head(self.backbone(batch.views)).float()
        loss = F.cross_entropy(logits, targets, weight=self.weights)
        return StepOutput(loss, {"acc": (logits.argmax(1) == targets).float().mean()})


def _check_enough_images(images: int, num_classes: int) -> None:
    k = CLUSTERS_PER_CLASS * num_classes
    if images < k:
        raise SsrrError(
            f"deepcluster: the train split has {images} images, fewer than its k={k} clusters "
            f"({CLUSTERS_PER_CLASS} x {num_classes} classes)"
        )
