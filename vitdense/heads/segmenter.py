"""Semantic segmentation models: backbone + decode head + optional auxiliary head.

As for detection, there is no transform inside the model: the data pipeline resizes each image and zero-pads
the batch bottom/right to a canvas whose sides are multiples of the model's ``size_divisibility``; the ways of
running a model over images of any size are in :mod:`vitdense.heads.segmentation_inference`.
"""

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from vitdense.heads.backbone_contract import require_attributes
from vitdense.heads.canvas_model import CanvasModel
from vitdense.heads.fcn_head import FCNHead
from vitdense.heads.linear_head import LinearHead
from vitdense.heads.semantic_fpn_head import SemanticFPNHead, group_norm_32
from vitdense.heads.upernet_head import UperNetHead

if TYPE_CHECKING:
    from vitdense.export.segmenter_wrapper import SegmenterForExport

__all__ = ["LinearSegmenter", "PyramidSegmenter", "Segmenter", "UperNetSegmenter", "padded_size"]


def padded_size(size: int, divisor: int) -> int:
    """``size`` rounded up to a multiple of ``divisor``."""
    return math.ceil(size / divisor) * divisor


def _fcn_aux_head(
    num_classes: int,
    backbone: nn.Module,
    channels: int | None,
    in_feature: str,
    dropout: float,
    norm_layer: Callable[[int], nn.Module],
) -> FCNHead | None:
    """mmseg's one-conv FCN auxiliary head on the pyramid level ``in_feature``; None when ``channels`` is."""
    if channels is None:
        return None
    if in_feature not in backbone.strides:
        raise ValueError(
            f"aux_feature {in_feature!r} is not a backbone level; levels are {list(backbone.strides)}"
        )
    return FCNHead(
        num_classes,
        backbone.out_channels,
        in_feature=in_feature,
        channels=channels,
        dropout=dropout,
        norm_layer=norm_layer,
    )


class Segmenter(CanvasModel):
    """A backbone, a decode head and an optional auxiliary head, with logits returned at the input size.

    Follows torchvision's segmentation models: the output dict has ``"out"`` and, in training mode when there
    is an auxiliary head, ``"aux"``; the task weights the auxiliary loss. Use :class:`PyramidSegmenter` or
    :class:`LinearSegmenter` from a recipe (they take ``num_classes`` first); build this class directly to
    combine other heads.

    Args:
        backbone: module with ``size_divisibility: int`` whose
            ``forward(images float (B, 3, H, W) in [0, 1])`` returns what ``head`` reads: a dict of maps
            (simple feature pyramid) or one map (plain ViT).
        head: maps the backbone's output to (B, K, h, w) logits on a grid that tiles the input exactly
            (h = H / stride).
        aux_head: like ``head``; run in training mode only.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, aux_head: nn.Module | None = None) -> None:
        super().__init__(backbone, ("size_divisibility",))
        self.head = head
        self.aux_head = aux_head

    def export_wrapper(self, image_size: tuple[int, int]) -> "SegmenterForExport":
        """This segmenter as a :class:`~vitdense.export.SegmenterForExport` at ``image_size`` (H, W)."""
        # Imported here: the wrapper's module imports this one.
        from vitdense.export.segmenter_wrapper import SegmenterForExport

        return SegmenterForExport(self, image_size)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Per-pixel class logits.

        Args:
            images: (B, 3, H, W) canvas, uint8 in [0, 255] (divided by 255 here) or float in [0, 1]; H and W
                are multiples of ``size_divisibility``. Normalisation happens inside the backbone.

        Returns:
            ``"out"``: float (B, K, H, W) logits, bilinearly upsampled (``align_corners=False``) from the
            head's stride to the canvas; in training mode with an auxiliary head also ``"aux"``, the same
            shape. Pixels of the padding get logits too: give them the loss's ignore index in the targets.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
        height, width = images.shape[-2:]
        d = self.size_divisibility
        if height % d or width % d:
            raise ValueError(
                f"images are {height}x{width} but the backbone needs sides that are multiples of {d}; "
                f"pad the batch to a multiple of {d} (e.g. {padded_size(height, d)}x{padded_size(width, d)})"
            )
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        elif not images.is_floating_point():
            raise TypeError(f"images must be uint8 in [0, 255] or float in [0, 1], got {images.dtype}")

        features = self.backbone(images)
        outputs = {"out": self._to_input_size(self.head(features), (height, width))}
        if self.training and self.aux_head is not None:
            outputs["aux"] = self._to_input_size(self.aux_head(features), (height, width))
        return outputs

    @staticmethod
    def _to_input_size(logits: Tensor, size: tuple[int, int]) -> Tensor:
        if logits.shape[-2:] == size:
            return logits
        # The head's grid tiles the canvas exactly (H = h * stride), so align_corners=False puts every cell's
        # value at its cell's centre in pixels.
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class PyramidSegmenter(Segmenter):
    """Semantic FPN on a simple feature pyramid, with mmseg's one-conv FCN auxiliary head on ``p4``.

    ``num_classes`` comes first so that a task can take ``Callable[[int], Segmenter]``: a recipe gives the
    backbone and the knobs as init args and the datamodule's class count completes the call. Both heads are
    wired from the backbone's declared ``out_channels`` and ``strides``.

    Args:
        num_classes: number of classes K.
        backbone: simple feature pyramid (``out_channels``, ``strides``, ``size_divisibility``) returning at
            least the ``in_features`` levels.
        in_features: levels fused by the Semantic FPN head, finest first, strides doubling.
        channels: channels of the Semantic FPN head's convs.
        dropout: dropout before both classifiers.
        norm_layer: norm after every conv of both heads, built as ``norm_layer(channels)`` (default
            GroupNorm(32); see :class:`SemanticFPNHead`).
        aux_channels: channels of the auxiliary head's conv; None for no auxiliary head.
        aux_feature: level the auxiliary head reads.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: nn.Module,
        *,
        in_features: Sequence[str] = ("p2", "p3", "p4", "p5"),
        channels: int = 128,
        dropout: float = 0.1,
        norm_layer: Callable[[int], nn.Module] = group_norm_32,
        aux_channels: int | None = 256,
        aux_feature: str = "p4",
    ) -> None:
        require_attributes(backbone, type(self).__name__, ("out_channels", "strides", "size_divisibility"))
        head = SemanticFPNHead(
            num_classes,
            backbone.out_channels,
            backbone.strides,
            in_features=in_features,
            channels=channels,
            dropout=dropout,
            norm_layer=norm_layer,
        )
        aux_head = _fcn_aux_head(num_classes, backbone, aux_channels, aux_feature, dropout, norm_layer)
        super().__init__(backbone, head, aux_head)


class UperNetSegmenter(Segmenter):
    """UperNet on a multi-level pyramid, with mmseg's one-conv FCN auxiliary head on ``p4``: the BEiT / MAE
    ADE20K model.

    With :class:`vitdense.backbones.MultiBlockPyramid` on four ViT blocks this is the model of the published
    UperNet rows (e.g. MAE ViT-B, 48.1 mIoU); any pyramid with the contract below works (ViTDet's
    :class:`vitdense.backbones.SimpleFeaturePyramid` too). ``num_classes`` comes first as for
    :class:`PyramidSegmenter`; both heads are wired from the backbone's declared ``out_channels`` and
    ``strides``.

    Args:
        num_classes: number of classes K.
        backbone: pyramid (``out_channels``, ``strides``, ``size_divisibility``) returning at least the
            ``in_features`` levels.
        in_features: levels fused by the UperNet head, finest first, strides doubling; the last gets the
            pyramid pooling module.
        channels: channels of the UperNet head's convs (mmseg: 512; BEiT / MAE: the ViT's width).
        pool_scales: grid sides of the pyramid pooling branches.
        dropout: dropout before both classifiers.
        norm_layer: norm after every conv of both heads, built as ``norm_layer(channels)`` (default
            GroupNorm(32); mmseg uses SyncBN, see :class:`UperNetHead`).
        aux_channels: channels of the auxiliary head's conv; None for no auxiliary head.
        aux_feature: level the auxiliary head reads (mmseg: the third of four, ``in_index=2``).
    """

    def __init__(
        self,
        num_classes: int,
        backbone: nn.Module,
        *,
        in_features: Sequence[str] = ("p2", "p3", "p4", "p5"),
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        norm_layer: Callable[[int], nn.Module] = group_norm_32,
        aux_channels: int | None = 256,
        aux_feature: str = "p4",
    ) -> None:
        require_attributes(backbone, type(self).__name__, ("out_channels", "strides", "size_divisibility"))
        head = UperNetHead(
            num_classes,
            backbone.out_channels,
            backbone.strides,
            in_features=in_features,
            channels=channels,
            pool_scales=pool_scales,
            dropout=dropout,
            norm_layer=norm_layer,
        )
        aux_head = _fcn_aux_head(num_classes, backbone, aux_channels, aux_feature, dropout, norm_layer)
        super().__init__(backbone, head, aux_head)


class LinearSegmenter(Segmenter):
    """DINOv2's linear probe on a plain ViT's patch map: BatchNorm and a 1x1 conv (see :class:`LinearHead`).

    Freeze the backbone (``BirderBackbone(freeze="all")``) for the DINOv2 protocol. ``num_classes`` comes
    first as for :class:`PyramidSegmenter`.

    Args:
        num_classes: number of classes K.
        backbone: single-map backbone (``out_channels``, ``size_divisibility``) returning
            (B, C, H / 14, W / 14), e.g. :class:`vitdense.backbones.BirderBackbone`, possibly with several
            blocks concatenated.
        dropout: dropout before the classifier.
    """

    def __init__(self, num_classes: int, backbone: nn.Module, *, dropout: float = 0.0) -> None:
        require_attributes(backbone, type(self).__name__, ("out_channels", "size_divisibility"))
        if hasattr(backbone, "strides"):
            raise TypeError(
                f"LinearSegmenter reads one map, but {type(backbone).__name__} declares pyramid levels "
                f"{list(backbone.strides)}; pass the plain ViT, or use PyramidSegmenter for a pyramid"
            )
        super().__init__(backbone, LinearHead(num_classes, backbone.out_channels, dropout=dropout))
