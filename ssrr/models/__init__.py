"""Models: backbones (`ssrr.models.backbones`) and relation / ablation heads (`ssrr.models.heads`)."""

from ssrr.models.backbones import BACKBONES, Backbone, build_backbone
from ssrr.models.heads import AGGREGATIONS, HEADS, DotHead, EncoderDotHead, RelationHead

__all__ = [
    "AGGREGATIONS",
    "BACKBONES",
    "HEADS",
    "Backbone",
    "DotHead",
    "EncoderDotHead",
    "RelationHead",
    "build_backbone",
]
