"""Plain ``torch.nn`` backbones: the birder ViT, the simple feature pyramid on its map, and BEiT's pyramid
from several of its blocks."""

from vitdense.backbones.birder_backbone import (
    DEFAULT_NETWORK,
    BirderBackbone,
    WeightsFileError,
    skip_weights_loading,
)
from vitdense.backbones.multi_block_pyramid import MultiBlockPyramid, channel_layer_norm
from vitdense.backbones.simple_feature_pyramid import SimpleFeaturePyramid

__all__ = [
    "DEFAULT_NETWORK",
    "BirderBackbone",
    "MultiBlockPyramid",
    "SimpleFeaturePyramid",
    "WeightsFileError",
    "channel_layer_norm",
    "skip_weights_loading",
]
