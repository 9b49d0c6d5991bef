"""Plain ``torch.nn`` backbones: the birder ViT and the simple feature pyramid on its map."""

from vitdense.backbones.birder_backbone import (
    DEFAULT_NETWORK,
    BirderBackbone,
    WeightsFileError,
    skip_weights_loading,
)
from vitdense.backbones.simple_feature_pyramid import SimpleFeaturePyramid

__all__ = [
    "DEFAULT_NETWORK",
    "BirderBackbone",
    "SimpleFeaturePyramid",
    "WeightsFileError",
    "skip_weights_loading",
]
