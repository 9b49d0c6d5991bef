"""ViTDet's simple feature pyramid on the single stride-14 map of a plain ViT."""

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from vitdense.backbones.birder_backbone import BirderBackbone
from vitdense.backbones.pyramid_strides import check_input_size, coarsest_stride
from vitdense.backbones.scale_branch import channel_layer_norm, level_name, scale_branch


def _conv_norm(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        channel_layer_norm(out_channels),
    )


class SimpleFeaturePyramid(nn.Module):
    """Multi-scale maps from one ViT map (Li et al., "Exploring Plain ViT Backbones", 2022).

    Scale 4 is two stride-2 deconvolutions, scale 2 one, scale 1 the map itself and scale 0.5 a 2x2
    max-pool; each branch then has a 1x1 and a 3x3 conv with a channel LayerNorm. An extra top level
    max-pools the coarsest one by 2 for the RPN. On a patch-14 ViT the strides are 3.5, 7, 14, 28 and
    56 pixels: they are declared here and every consumer (anchors, RoI pooling) must use them as is,
    never round them to powers of two.

    Levels are named ``p2`` ... ``p6`` as in ViTDet (``p4`` is the ViT's own map). Cell ``i`` of a level
    with stride ``s`` covers pixels ``[i * s, (i + 1) * s)``: the deconvolutions split a cell exactly in
    two and the 2x2 pools merge exactly two, so the grids stay phase-aligned with the image.

    Args:
        vit: the ViT, with ``out_channels`` and ``stride`` attributes.
        out_channels: channels of every level.
        scale_factors: upsampling factor of each level relative to the ViT map; 4, 2, 1, 0.5 or a subset.
        top_block: add the max-pooled top level (``p6``), used by the RPN only.
    """

    def __init__(
        self,
        vit: BirderBackbone,
        out_channels: int = 256,
        scale_factors: Sequence[float] = (4.0, 2.0, 1.0, 0.5),
        top_block: bool = True,
    ) -> None:
        super().__init__()
        if list(scale_factors) != sorted(scale_factors, reverse=True):
            raise ValueError(f"scale_factors must go from fine to coarse, got {scale_factors}")

        self.vit = vit
        self.out_channels = out_channels
        dim = vit.out_channels
        self.levels = nn.ModuleDict()
        strides: dict[str, float] = {}
        for scale in scale_factors:
            name = level_name(scale)
            resample, in_channels = scale_branch(scale, dim, channel_layer_norm, halve_channels=True)
            self.levels[name] = nn.Sequential(
                resample, _conv_norm(in_channels, out_channels, 1), _conv_norm(out_channels, out_channels, 3)
            )
            strides[name] = vit.stride / scale

        self.top_block = top_block
        if top_block:
            last_name, last_stride = next(reversed(strides.items()))
            strides[f"p{int(last_name[1:]) + 1}"] = last_stride * 2

        self.strides: dict[str, float] = strides
        self.size_divisibility: int = coarsest_stride(strides)

    def forward(self, images: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        """Compute the pyramid.

        Args:
            images: float (B, 3, H, W) RGB in [0, 1]; H and W multiples of ``size_divisibility`` (56).

        Returns:
            Ordered ``p2`` ... ``p6`` maps, each (B, out_channels, H / stride, W / stride).
        """
        check_input_size(*images.shape[-2:], self.size_divisibility)
        features = self.vit(images)
        outputs: OrderedDict[str, torch.Tensor] = OrderedDict(
            (name, branch(features)) for name, branch in self.levels.items()
        )
        if self.top_block:
            # A 2x2 pool rather than ViTDet's 1x1 stride-2 subsampling: each top cell then covers exactly the
            # 56 px it is declared to, centred where its anchors are.
            top_name = list(self.strides)[-1]
            outputs[top_name] = F.max_pool2d(next(reversed(outputs.values())), kernel_size=2, stride=2)
        return outputs
