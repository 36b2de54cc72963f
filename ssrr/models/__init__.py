"""Models: backbones (`ssrr.models.backbones`), relation / ablation heads (`ssrr.models.heads`) and the
BatchNorm recalibration of a trained backbone (`ssrr.models.batchnorm`)."""

from ssrr.models.backbones import BACKBONES, Backbone, build_backbone
from ssrr.models.batchnorm import recalibrate_batchnorm
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
    "recalibrate_batchnorm",
]
