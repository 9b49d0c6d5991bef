"""UperNet head (Xiao et al., "Unified Perceptual Parsing for Scene Understanding", 2018), as mmseg's."""

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from vitdense.heads.level_strides import doubling_level_strides
from vitdense.heads.pyramid_pooling import PyramidPoolingModule, conv1x1_norm_relu
from vitdense.heads.semantic_fpn_head import conv_norm_relu, group_norm_32, init_classifier

__all__ = ["UperNetHead"]


class UperNetHead(nn.Module):
    """A pyramid pooling module on the coarsest level, a top-down FPN, and all levels fused at the finest.

    The coarsest level goes through a :class:`PyramidPoolingModule` and a 3x3 conv (the "bottleneck"); every
    other level through a lateral 1x1 conv. Top-down, each lateral map adds the x2-upsampled map above it,
    then gets a 3x3 output conv (the pooled map is used as it is). All levels are upsampled to the finest,
    concatenated, fused by a 3x3 conv, and dropout and a 1x1 conv give the class logits. Every conv is
    followed by a norm and ReLU, as mmseg's ``ConvModule``.

    This is the head of the BEiT / MAE ADE20K rows (with :class:`vitdense.backbones.MultiBlockPyramid`).
    mmseg uses SyncBN over 8 GPUs in every conv; the default here is GroupNorm(32), which does not depend on
    the two crops per GPU (see :class:`SemanticFPNHead`). Pass ``nn.BatchNorm2d`` and train with
    ``sync_batchnorm`` to follow mmseg exactly.

    Upsampling is bilinear with ``align_corners=False`` by exact factors of 2: consecutive levels' declared
    strides must double (3.5, 7, 14, 28 on a patch-14 ViT), which is checked here, and the input must be a
    multiple of the coarsest stride so that the grids nest (checked in ``forward``).

    Args:
        num_classes: number of output classes K.
        in_channels: channels of every input level (the pyramid's ``out_channels``).
        strides: the backbone's declared stride of each level, e.g. ``{"p2": 3.5, "p3": 7.0, ...}``; levels
            not in ``in_features`` are ignored.
        in_features: levels to fuse, finest first; each stride twice the previous one. The last one gets the
            pyramid pooling module.
        channels: channels of every conv (mmseg: 512; BEiT / MAE: the ViT's width).
        pool_scales: grid sides of the pyramid pooling branches.
        dropout: dropout probability before the classifier.
        norm_layer: norm after every conv, built as ``norm_layer(channels)``.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        strides: Mapping[str, float],
        in_features: Sequence[str] = ("p2", "p3", "p4", "p5"),
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        norm_layer: Callable[[int], nn.Module] = group_norm_32,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        in_features = tuple(in_features)
        if len(in_features) < 2:
            raise ValueError(f"in_features must name at least two levels (top-down path), got {in_features}")
        level_strides = doubling_level_strides(in_features, strides)

        self.num_classes = num_classes
        self.in_features = in_features
        self.stride: float = level_strides[0]
        self.pyramid_pooling = PyramidPoolingModule(in_channels, channels, pool_scales, norm_layer)
        pooled_channels = self.pyramid_pooling.out_channels
        self.bottleneck = nn.Sequential(*conv_norm_relu(pooled_channels, channels, norm_layer))
        self.lateral_convs = nn.ModuleList(
            conv1x1_norm_relu(in_channels, channels, norm_layer) for _ in in_features[:-1]
        )
        self.output_convs = nn.ModuleList(
            nn.Sequential(*conv_norm_relu(channels, channels, norm_layer)) for _ in in_features[:-1]
        )
        self.fusion = nn.Sequential(*conv_norm_relu(len(in_features) * channels, channels, norm_layer))
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)
        init_classifier(self.classifier)

    def _check_nesting(self, maps: Sequence[Tensor]) -> None:
        for depth in range(1, len(maps)):
            fine, coarse = maps[depth - 1].shape[-2:], maps[depth].shape[-2:]
            if (fine[0], fine[1]) != (2 * coarse[0], 2 * coarse[1]):
                raise ValueError(
                    f"level {self.in_features[depth]} is {tuple(coarse)} but {self.in_features[depth - 1]} "
                    f"is {tuple(fine)}, not twice as large: the input image must be a multiple of the "
                    "coarsest stride so that the levels' grids nest exactly"
                )

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        """Fuse the levels and classify every cell of the finest one.

        Args:
            features: at least the ``in_features`` levels, each float (B, in_channels, H / s, W / s) for an
                input of H x W pixels that is a multiple of the coarsest stride.

        Returns:
            float (B, num_classes, H / stride, W / stride) logits at the finest level's stride
            (``self.stride``, 3.5 on a patch-14 pyramid).
        """
        inputs = [features[name] for name in self.in_features]
        self._check_nesting(inputs)
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs[:-1])]
        laterals.append(self.bottleneck(self.pyramid_pooling(inputs[-1])))
        for depth in range(len(laterals) - 1, 0, -1):
            laterals[depth - 1] = laterals[depth - 1] + F.interpolate(
                laterals[depth], scale_factor=2.0, mode="bilinear", align_corners=False
            )
        outputs = [conv(x) for conv, x in zip(self.output_convs, laterals[:-1])] + [laterals[-1]]
        finest = outputs[0].shape[-2:]
        fused = torch.cat(
            [outputs[0]]
            + [F.interpolate(x, size=finest, mode="bilinear", align_corners=False) for x in outputs[1:]],
            dim=1,
        )
        return self.classifier(self.dropout(self.fusion(fused)))
