"""BEiT / MAE's segmentation neck: one pyramid level from each of several blocks of a plain ViT."""

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch import nn

from vitdense.backbones.birder_backbone import BirderBackbone
from vitdense.backbones.pyramid_strides import check_input_size, coarsest_stride
from vitdense.backbones.scale_branch import channel_layer_norm, level_name, scale_branch

__all__ = ["MultiBlockPyramid", "channel_layer_norm"]


class MultiBlockPyramid(nn.Module):
    """Level ``k`` of the pyramid resampled from the ``k``-th selected ViT block (BEiT's ``fpn1``...``fpn4``).

    The ADE20K UperNet protocol of BEiT (Bao et al. 2022) and MAE (He et al. 2022; mmseg's
    ``Feature2Pyramid``): the ViT returns the patch maps of several blocks
    (``BirderBackbone(out_indices=...)`` concatenates them on channels; they are split back here in block
    order). The earliest block is
    upsampled x4 by two stride-2 deconvolutions with a norm and GELU between, the next x2 by one
    deconvolution, the next is kept as is and the last is max-pooled 2x2. Every level keeps the ViT's width;
    there are no further convs (the UperNet head's lateral convs come next).

    On a patch-14 ViT the strides are 3.5, 7, 14 and 28 pixels, declared in ``strides`` for the heads; they
    are never rounded to powers of two. Cell ``i`` of a level with stride ``s`` covers pixels
    ``[i * s, (i + 1) * s)``: the deconvolutions split a cell exactly in two and the pool merges exactly two,
    which holds when the input is a multiple of the coarsest stride (``size_divisibility``, 28).

    Args:
        vit: the ViT with ``out_indices`` naming one block per level, finest level first (e.g. blocks
            ``[5, 9, 13, 17]`` of 18), and ``out_channels`` (all blocks together) and ``stride``.
        scale_factors: upsampling factor of each level relative to the ViT map, fine to coarse; 4, 2, 1, 0.5
            or a subset, one per selected block.
        norm_layer: norm between the two deconvolutions of the x4 branch, built as ``norm_layer(channels)``.
            BEiT and mmseg use SyncBN there; the default is a channel LayerNorm as in ViTDet's pyramid, which
            does not depend on the two crops per GPU of the ADE20K recipes.
    """

    def __init__(
        self,
        vit: BirderBackbone,
        scale_factors: Sequence[float] = (4.0, 2.0, 1.0, 0.5),
        norm_layer: Callable[[int], nn.Module] = channel_layer_norm,
    ) -> None:
        super().__init__()
        scale_factors = [float(scale) for scale in scale_factors]
        if not scale_factors or scale_factors != sorted(set(scale_factors), reverse=True):
            raise ValueError(f"scale_factors must go from fine to coarse, each once, got {scale_factors}")
        blocks = vit.out_indices
        if blocks is None or len(blocks) != len(scale_factors):
            raise ValueError(
                f"MultiBlockPyramid takes one ViT block per level ({len(scale_factors)} levels for scale "
                f"factors {scale_factors}) but the ViT returns blocks {blocks or 'last only'}: give "
                f"BirderBackbone out_indices with {len(scale_factors)} blocks, e.g. [5, 9, 13, 17] of 18"
            )

        self.vit = vit
        dim = vit.out_channels // len(blocks)
        self.out_channels: int = dim
        self.levels = nn.ModuleDict()
        strides: dict[str, float] = {}
        for scale in scale_factors:
            name = level_name(scale)
            self.levels[name], _ = scale_branch(scale, dim, norm_layer, halve_channels=False)
            strides[name] = vit.stride / scale

        self.strides: dict[str, float] = strides
        self.size_divisibility: int = coarsest_stride(strides)

    def forward(self, images: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        """Compute the pyramid.

        Args:
            images: float (B, 3, H, W) RGB in [0, 1]; H and W multiples of ``size_divisibility`` (28).

        Returns:
            Ordered ``p2`` ... ``p5`` maps (the levels of ``scale_factors``), each float
            (B, out_channels, H / stride, W / stride); ``p2`` comes from the first selected block.
        """
        check_input_size(*images.shape[-2:], self.size_divisibility)
        block_maps = self.vit(images).split(self.out_channels, dim=1)
        return OrderedDict(
            (name, resample(block_map))
            for (name, resample), block_map in zip(self.levels.items(), block_maps, strict=True)
        )
