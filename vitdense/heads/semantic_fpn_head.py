"""Semantic FPN head (Kirillov et al., "Panoptic Feature Pyramid Networks", 2019) on exact-stride pyramids."""

from collections.abc import Callable, Mapping, Sequence

from torch import Tensor, nn

from vitdense.heads.level_strides import doubling_level_strides

__all__ = ["SemanticFPNHead", "group_norm_32"]


def group_norm_32(num_channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups, Panoptic FPN's norm (see :class:`SemanticFPNHead` for why it is the default).

    A named function rather than a ``functools.partial`` so that a recipe can give it by import path
    (``norm_layer: vitdense.heads.group_norm_32``) and a saved config can write it back.
    """
    return nn.GroupNorm(32, num_channels)


def conv_norm_relu(
    in_channels: int, out_channels: int, norm_layer: Callable[[int], nn.Module]
) -> list[nn.Module]:
    """3x3 conv (no bias: the norm's shift replaces it), norm, ReLU."""
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        norm_layer(out_channels),
        nn.ReLU(inplace=True),
    ]


def init_classifier(conv: nn.Conv2d) -> None:
    """Near-zero classifier so that training starts from almost uniform class scores (mmseg's init)."""
    nn.init.normal_(conv.weight, mean=0.0, std=0.01)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class SemanticFPNHead(nn.Module):
    """Panoptic FPN's semantic branch, the design of mmseg's ``FPNHead``, on a simple feature pyramid.

    Each level in ``in_features`` goes through its own stack of (3x3 conv, norm, ReLU) stages, each stage
    but the finest level's followed by a x2 bilinear upsampling, until it reaches the finest level's grid:
    one stage for p2 and p3, two for p4, three for p5. The maps are summed, then dropout and a 1x1 conv give
    the class logits.

    Why Semantic FPN rather than UperNet: UperNet builds a pyramid pooling module on the coarsest map and a
    top-down FPN with lateral and output convs before fusing; on a plain ViT, ViTDet's simple feature pyramid
    already provides the multi-scale maps with their own 1x1 and 3x3 convs, so UperNet would rebuild that
    pyramid a second time at several times this head's cost (its 3x3 fusion convs run at 512+ channels on
    the stride-3.5 grid). Semantic FPN only adds what the pyramid lacks: fusing the levels at the finest one.

    Why GroupNorm by default: semantic segmentation of a ViT-L at 512-1024 px crops fits few images per
    GPU, where BatchNorm's batch statistics are noisy and differ between training and inference; GroupNorm
    (Panoptic FPN's choice) does not depend on the batch. Pass ``nn.BatchNorm2d`` (mmseg's choice, with
    SyncBN over many GPUs) to reproduce mmseg's numbers.

    Upsampling is an exact x2 at every stage because consecutive levels' declared strides double
    (3.5, 7, 14, 28 on a patch-14 ViT); this is checked here. Cell ``i`` of a stride-``s`` level covers pixels
    ``[i * s, (i + 1) * s)``, and bilinear x2 with ``align_corners=False`` maps cell centres onto cell
    centres, so every level lands phase-aligned on the finest grid.

    Args:
        num_classes: number of output classes K (including background if the dataset labels it).
        in_channels: channels of every input level (the pyramid's ``out_channels``).
        strides: the backbone's declared stride of each level, e.g. ``{"p2": 3.5, "p3": 7.0, ...}``; extra
            levels (``p6``) are ignored.
        in_features: levels to fuse, finest first; each stride must be twice the previous one.
        channels: channels of every conv stage.
        dropout: dropout probability before the classifier.
        norm_layer: norm after every conv, built as ``norm_layer(channels)``.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        strides: Mapping[str, float],
        in_features: Sequence[str] = ("p2", "p3", "p4", "p5"),
        channels: int = 128,
        dropout: float = 0.1,
        norm_layer: Callable[[int], nn.Module] = group_norm_32,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        in_features = tuple(in_features)
        if not in_features:
            raise ValueError("in_features must name at least one level")
        level_strides = doubling_level_strides(in_features, strides)

        self.num_classes = num_classes
        self.in_features = in_features
        self.stride: float = level_strides[0]
        self.scale_heads = nn.ModuleDict()
        for depth, name in enumerate(in_features):
            stages: list[nn.Module] = []
            # The finest level keeps one conv stage without upsampling; level `depth` needs `depth` x2 steps.
            for k in range(max(depth, 1)):
                stages += conv_norm_relu(in_channels if k == 0 else channels, channels, norm_layer)
                if depth > 0:
                    stages.append(nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=False))
            self.scale_heads[name] = nn.Sequential(*stages)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)
        init_classifier(self.classifier)

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        """Fuse the levels and classify every cell of the finest one.

        Args:
            features: at least the ``in_features`` levels, each float (B, in_channels, H / s, W / s) for an
                input of H x W pixels that is a multiple of the coarsest stride.

        Returns:
            float (B, num_classes, H / stride, W / stride) logits at the finest level's stride
            (``self.stride``, 3.5 on a patch-14 pyramid).
        """
        fused: Tensor | None = None
        for name, scale_head in self.scale_heads.items():
            level = scale_head(features[name])
            if fused is not None and level.shape[-2:] != fused.shape[-2:]:
                raise ValueError(
                    f"level {name} upsamples to {tuple(level.shape[-2:])} but {self.in_features[0]} is "
                    f"{tuple(fused.shape[-2:])}: the input image must be a multiple of the coarsest stride "
                    "so that the levels' grids nest exactly"
                )
            fused = level if fused is None else fused + level
        assert fused is not None
        return self.classifier(self.dropout(fused))
