"""DeepCluster (Caron et al. 2018): each epoch, cluster the features, then learn to predict the clusters.

As the authors ran it: the clustering pass embeds crop+flip images of the train split; the features are
PCA-whitened to D dimensions (D/2 when D >= 512) and L2-normalised; k-means (k = 10 x classes) is seeded
by k-means++ with 5 restarts of 30 iterations; the loss weighs each cluster by 1 - its frequency; and the
classifier's last layer is re-initialised N(0, 0.01), bias 0, for the newly numbered clusters."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ssrr import ranks
from ssrr.cluster import kmeans, one_minus_frequency_weights, pca_dims, pca_whiten
from ssrr.config import RunConfig
from ssrr.errors import SsrrError
from ssrr.methods.base import EpochContext, Method, StepOutput, register
from ssrr.methods.heads import mlp_head
from ssrr.models.backbones import Backbone
from ssrr.pipelines import recipes

if TYPE_CHECKING:
    from ssrr.pipelines.loader import Batch

CLUSTERS_PER_CLASS = 10
LAST_LAYER_STD = 0.01  # the re-initialised last layer: N(0, 0.01), bias 0


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
    def recipe(cls, config: RunConfig, image_size: tuple[int, int] | None = None) -> recipes.Recipe:
        return clustering_recipe(image_size)  # the authors train on the same crop (pad side / 8) + flip

    @classmethod
    def check_data(cls, config: RunConfig, train_samples: int, num_classes: int) -> None:
        _check_enough_images(train_samples, num_classes)

    @torch.no_grad()
    def on_epoch_start(self, context: EpochContext) -> None:
        """Features of the whole train split (crop+flip images), PCA-whitened and L2-normalised, k-means.

        With several processes each rank embeds its share (with rank 0's BatchNorm statistics), the shares are
        gathered in rank order (the split's stored order, as one process reads it), rank 0 clusters them and
        sends the assignments to every rank: all ranks train against one set of clusters and class weights,
        the same as one process would compute from the same features and seed."""
        loader = clustering_loader(context, self.config.seed)
        was_training = self.backbone.training
        self.backbone.eval()
        ranks.sync_from_main(self.backbone.buffers())
        features, indices = [], []
        for batch in loader.epoch(0):
            features.append(context.execution.forward(self.backbone, batch.views)[batch.valid])
            indices.append(batch.index[batch.valid])
        self.backbone.train(was_training)
        generator = torch.Generator().manual_seed(self.config.seed * 1000 + context.epoch)
        self.assignments, self.weights = cluster_across_ranks(
            torch.cat(features), torch.cat(indices), self.k, generator
        )
        last = self.head[-1]  # a fresh classifier for the new, arbitrarily numbered clusters
        assert isinstance(last, nn.Linear)
        reinitialise_last_layer(last)
        ranks.sync_from_main(last.parameters())  # each rank draws from its own stream: rank 0's layer for all

    def epoch_marks(self) -> dict[str, str]:
        """A hash of this rank's cluster assignments (sample index -> cluster): equal on every rank."""
        digest = hashlib.sha256(self.assignments.cpu().numpy().tobytes()).hexdigest()[:16]
        return {"assignments_sha256": digest}

    def forward(self, batch: Batch) -> StepOutput:  # type: ignore[override]
        targets = self.assignments[batch.index]
        logits = self.head(self.backbone(batch.views)).float()
        loss = F.cross_entropy(logits, targets, weight=self.weights)
        return StepOutput(loss, {"acc": (logits.argmax(1) == targets).float().mean()})


def clustering_recipe(image_size: tuple[int, int] | None = None) -> recipes.Recipe:
    """The images the clustering pass embeds: random crop (pad side / 8) + flip, as the authors' code."""
    return recipes.crop_flip(recipes.pad_for(image_size))


def clustering_loader(context: EpochContext, seed: int) -> Any:
    """A loader that reads the train split once, in order, through `clustering_recipe`, with crops drawn
    afresh every epoch (as the authors' DataLoader draws them): its seed moves with the epoch."""
    loader = context.make_loader(clustering_recipe(context.image_size), training=False)
    loader.seed = seed * 1000 + 1 + context.epoch  # read in `loader.epoch(...)`, never before
    return loader


def cluster_across_ranks(
    z: torch.Tensor, index: torch.Tensor, k: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(assignments by sample index, class weights) of the features (z, index) of every rank, the same on every
    rank: the rows gathered in rank order, clustered once (`cluster_on_main`). One process: its own rows."""
    z, index = ranks.gather_rows(z), ranks.gather_rows(index)
    _check_enough_images(len(z), k // CLUSTERS_PER_CLASS)  # again: corrupt samples may have been skipped
    clusters = cluster_on_main(z, k, generator)
    assignments = torch.full((int(index.max()) + 1,), -1, dtype=torch.long, device=z.device)  # -1: not read
    assignments[index] = clusters
    return assignments, one_minus_frequency_weights(clusters, k)


def cluster_on_main(z: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """`cluster_features` run once, on rank 0, its assignments sent to every rank (one process: just run it).
    One run, not one per rank: k-means on a GPU need not give bit-identical results on two devices."""
    rank, size = ranks.world()
    if size == 1:
        return cluster_features(z, k, generator)
    clusters = (
        cluster_features(z, k, generator) if rank == 0 else torch.empty(len(z), dtype=torch.long, device=z.device)
    )
    return ranks.broadcast_from_main(clusters)


def cluster_features(z: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Cluster assignments (N,) of features: PCA-whitened to `pca_dims(D)`, L2-normalised, k-means++ x 5."""
    whitened = F.normalize(pca_whiten(z, pca_dims(z.shape[1])), dim=1)
    _, clusters = kmeans(whitened, k, generator=generator)
    return clusters


def reinitialise_last_layer(layer: nn.Linear) -> None:
    """Weights N(0, 0.01), bias 0: the authors' fresh classifier after each clustering."""
    nn.init.normal_(layer.weight, 0.0, LAST_LAYER_STD)
    nn.init.zeros_(layer.bias)


def _check_enough_images(images: int, num_classes: int) -> None:
    k = CLUSTERS_PER_CLASS * num_classes
    if images < k:
        raise SsrrError(
            f"deepcluster: the train split has {images} images, fewer than its k={k} clusters "
            f"({CLUSTERS_PER_CLASS} x {num_classes} classes)"
        )
