"""Default wiring of Faster / Mask R-CNN on a simple-feature-pyramid ViT, in the ViTDet configuration.

Parts are torchvision's (`RegionProposalNetwork`, `RPNHead`, `RoIHeads`, `FastRCNNConvFCHead`, ...) except the
two that must know the true, non-power-of-two strides of a patch-14 pyramid, `StrideAnchorGenerator` and
`ExactMultiScaleRoIAlign`, `AlignedRoIHeads`, whose mask targets are cropped with the features' pixel
convention, and three that do torchvision's work without its host synchronisations:
`SyncFreeMatcher`, `SyncFreeSampler` and `DeviceBoxCoder`. Defaults follow ViTDet (Li et al. 2022, detectron2
`projects/ViTDet`): 2-conv RPN head, 4-conv + 1-fc box head and 4-conv mask head with LayerNorm, 512 RoIs per
image. Where torchvision's parts differ from detectron2's, torchvision's stay: RoIAlign with 2 samples per bin
(detectron2: adaptive) and a smooth-L1 box loss (detectron2's ViTDet: L1). Cascade Mask R-CNN follows ViTDet's
`cascade_mask_rcnn_vitdet` configuration on the same RPN, pooler and mask branch.
"""

import functools
from collections.abc import Callable, Sequence

from birder.layers import LayerNorm2d
from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead

from vitdense.heads.anchor_generator import StrideAnchorGenerator, default_anchor_sizes
from vitdense.heads.box_coder import DeviceBoxCoder
from vitdense.heads.cascade_roi_heads import CascadeRoIHeads, CascadeStage, ClassAgnosticBoxPredictor
from vitdense.heads.detector import RCNNDetector
from vitdense.heads.matcher import SyncFreeMatcher
from vitdense.heads.roi_align import ExactMultiScaleRoIAlign
from vitdense.heads.roi_heads import AlignedRoIHeads
from vitdense.heads.sampler import SyncFreeSampler

__all__ = [
    "CASCADE_BOX_CODER_WEIGHTS",
    "CASCADE_IOU_THRESHOLDS",
    "CascadeMaskRCNN",
    "FasterRCNN",
    "MaskRCNN",
    "build_cascade_roi_heads",
    "build_roi_heads",
    "build_rpn",
    "layer_norm_2d",
]

# detectron2's "LN" for the ViTDet heads: a per-location LayerNorm over channels with eps 1e-6.
layer_norm_2d: Callable[[int], nn.Module] = functools.partial(LayerNorm2d, eps=1e-6)

POOLED_LEVELS = ("p2", "p3", "p4", "p5")

# ViTDet's cascade (detectron2 `cascade_mask_rcnn_vitdet_b_100ep.py`): each stage matches at a higher IoU and,
# as its RoIs sit closer to the objects, regresses finer deltas (weights doubled, then tripled).
CASCADE_IOU_THRESHOLDS = (0.5, 0.6, 0.7)
CASCADE_BOX_CODER_WEIGHTS = ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))


def _strides_of(backbone: nn.Module, names: Sequence[str]) -> list[float]:
    missing = [n for n in names if n not in backbone.strides]
    if missing:
        raise ValueError(f"backbone has no levels {missing}; its strides are {dict(backbone.strides)}")
    return [float(backbone.strides[n]) for n in names]


def _without_host_syncs(part: RegionProposalNetwork | RoIHeads) -> None:
    """Swap torchvision's matcher, sampler and box coder for equivalents that do not make the host wait on a
    GPU (same matches and box codes; subsets of the same sizes and distribution)."""
    matcher, sampler = part.proposal_matcher, part.fg_bg_sampler
    part.proposal_matcher = SyncFreeMatcher(
        matcher.high_threshold, matcher.low_threshold, matcher.allow_low_quality_matches
    )
    part.fg_bg_sampler = SyncFreeSampler(sampler.batch_size_per_image, sampler.positive_fraction)
    part.box_coder = DeviceBoxCoder(part.box_coder.weights, bbox_xform_clip=part.box_coder.bbox_xform_clip)


def _mask_branch(
    backbone: nn.Module,
    num_classes: int,
    pooled_levels: Sequence[str],
    head_dim: int,
    norm_layer: Callable[[int], nn.Module],
) -> dict[str, nn.Module]:
    """Mask R-CNN's branch: 14x14 pooling at the true strides, 4 convs, deconv to 28x28, a mask per class."""
    return {
        "mask_roi_pool": ExactMultiScaleRoIAlign(
            pooled_levels, _strides_of(backbone, pooled_levels), 14, sampling_ratio=2
        ),
        "mask_head": MaskRCNNHeads(backbone.out_channels, [head_dim] * 4, 1, norm_layer=norm_layer),
        "mask_predictor": MaskRCNNPredictor(head_dim, head_dim, num_classes + 1),
    }


def build_rpn(
    backbone: nn.Module,
    *,
    anchor_size_multiple: float = 8.0,
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    pre_nms_top_n: tuple[int, int] = (2000, 1000),
    post_nms_top_n: tuple[int, int] = (1000, 1000),
    nms_thresh: float = 0.7,
    batch_size_per_image: int = 256,
    positive_fraction: float = 0.5,
) -> RegionProposalNetwork:
    """Region proposal network over every backbone level, with anchors on the true strides.

    Args:
        backbone: provides `out_channels` and `strides` (all levels the backbone returns, in order).
        anchor_size_multiple: one anchor size per level, this times the level's stride
            (8 -> 28, 56, 112, 224, 448 px for strides 3.5 ... 56).
        aspect_ratios: height / width ratios of the anchors at every location.
        pre_nms_top_n: (train, test) proposals kept per level before NMS.
        post_nms_top_n: (train, test) proposals kept per image after NMS.
        nms_thresh: IoU threshold of the proposal NMS.
        batch_size_per_image: anchors sampled per image for the RPN losses.
        positive_fraction: largest share of positives among the sampled anchors.

    Returns:
        torchvision `RegionProposalNetwork` (IoU >= 0.7 positive, < 0.3 negative).
    """
    strides = list(backbone.strides.values())
    anchors = StrideAnchorGenerator(
        default_anchor_sizes(strides, anchor_size_multiple), [list(aspect_ratios)] * len(strides), strides
    )
    head = RPNHead(backbone.out_channels, anchors.num_anchors_per_location()[0], conv_depth=2)
    rpn = RegionProposalNetwork(
        anchors,
        head,
        fg_iou_thresh=0.7,
        bg_iou_thresh=0.3,
        batch_size_per_image=batch_size_per_image,
        positive_fraction=positive_fraction,
        pre_nms_top_n={"training": pre_nms_top_n[0], "testing": pre_nms_top_n[1]},
        post_nms_top_n={"training": post_nms_top_n[0], "testing": post_nms_top_n[1]},
        nms_thresh=nms_thresh,
    )
    _without_host_syncs(rpn)
    return rpn


def build_roi_heads(
    backbone: nn.Module,
    num_classes: int,
    *,
    masks: bool = False,
    pooled_levels: Sequence[str] = POOLED_LEVELS,
    head_dim: int = 256,
    fc_dim: int = 1024,
    norm_layer: Callable[[int], nn.Module] = layer_norm_2d,
    batch_size_per_image: int = 512,
    positive_fraction: float = 0.25,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
) -> AlignedRoIHeads:
    """Box (and mask) heads pooling 7x7 (14x14) from `pooled_levels` at their true strides.

    Args:
        backbone: provides `out_channels` and `strides`.
        num_classes: foreground classes K; the predictors get K + 1 outputs (0 is background).
        masks: add the Mask R-CNN branch (4 convs, deconv to 28x28, one mask per class).
        pooled_levels: levels the RoI poolers read, finest first.
        head_dim: channels of every head conv (4 in the box head, 4 in the mask head).
        fc_dim: width of the box head's fully connected layer.
        norm_layer: norm after every head conv, built as `norm_layer(channels)`.
        batch_size_per_image: RoIs sampled per image for the box losses.
        positive_fraction: largest share of positives among them.
        score_thresh: eval: drop detections scoring at or below this.
        nms_thresh: eval: per-class NMS IoU threshold.
        detections_per_img: eval: keep at most this many detections per image.

    Returns:
        `AlignedRoIHeads`, a torchvision `RoIHeads` (IoU >= 0.5 foreground, box coder weights (10, 10, 5, 5)).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes counts foreground classes and must be >= 1, got {num_classes}")
    strides = _strides_of(backbone, pooled_levels)
    channels = backbone.out_channels
    box_pool = ExactMultiScaleRoIAlign(pooled_levels, strides, 7, sampling_ratio=2)
    box_head = FastRCNNConvFCHead((channels, 7, 7), [head_dim] * 4, [fc_dim], norm_layer=norm_layer)
    mask_parts = _mask_branch(backbone, num_classes, pooled_levels, head_dim, norm_layer) if masks else {}
    roi_heads = AlignedRoIHeads(
        box_pool,
        box_head,
        FastRCNNPredictor(fc_dim, num_classes + 1),
        fg_iou_thresh=0.5,
        bg_iou_thresh=0.5,
        batch_size_per_image=batch_size_per_image,
        positive_fraction=positive_fraction,
        bbox_reg_weights=(10.0, 10.0, 5.0, 5.0),
        score_thresh=score_thresh,
        nms_thresh=nms_thresh,
        detections_per_img=detections_per_img,
        **mask_parts,
    )
    _without_host_syncs(roi_heads)
    return roi_heads


def build_cascade_roi_heads(
    backbone: nn.Module,
    num_classes: int,
    *,
    masks: bool = True,
    pooled_levels: Sequence[str] = POOLED_LEVELS,
    head_dim: int = 256,
    fc_dim: int = 1024,
    norm_layer: Callable[[int], nn.Module] = layer_norm_2d,
    iou_thresholds: Sequence[float] = CASCADE_IOU_THRESHOLDS,
    box_coder_weights: Sequence[tuple[float, float, float, float]] = CASCADE_BOX_CODER_WEIGHTS,
    batch_size_per_image: int = 512,
    positive_fraction: float = 0.25,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
) -> CascadeRoIHeads:
    """Cascade R-CNN box stages (and the Mask R-CNN branch) pooling from `pooled_levels` at their true
    strides.

    Every stage has its own 4-conv + 1-fc box head (with `norm_layer`) and class-agnostic predictor; the 7x7
    box pooler is shared, as in detectron2.

    Args:
        backbone: provides `out_channels` and `strides`.
        num_classes: foreground classes K; the class scores get K + 1 outputs (0 is background).
        masks: add the Mask R-CNN branch (as :func:`build_roi_heads`).
        pooled_levels: levels the RoI poolers read, finest first.
        head_dim: channels of every head conv.
        fc_dim: width of each box head's fully connected layer.
        norm_layer: norm after every head conv, built as `norm_layer(channels)`.
        iou_thresholds: per stage, the IoU at which an RoI is foreground.
        box_coder_weights: per stage, the box coder's (wx, wy, ww, wh).
        batch_size_per_image: RoIs sampled per image for the first stage (later stages take them all).
        positive_fraction: largest share of positives among them.
        score_thresh: eval: drop detections whose mean score is at or below this.
        nms_thresh: eval: per-class NMS IoU threshold.
        detections_per_img: eval: keep at most this many detections per image.

    Returns:
        `CascadeRoIHeads` whose stages match without low-quality matches and whose RoIs are all labelled
        (no ignored band), as detectron2's `Matcher([iou], [0, 1])`.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes counts foreground classes and must be >= 1, got {num_classes}")
    if len(iou_thresholds) != len(box_coder_weights) or not iou_thresholds:
        raise ValueError(
            f"give one IoU threshold and one box-coder weight tuple per stage: got {len(iou_thresholds)} "
            f"thresholds and {len(box_coder_weights)} weight tuples"
        )
    strides = _strides_of(backbone, pooled_levels)
    channels = backbone.out_channels
    stages = [
        CascadeStage(
            FastRCNNConvFCHead((channels, 7, 7), [head_dim] * 4, [fc_dim], norm_layer=norm_layer),
            ClassAgnosticBoxPredictor(fc_dim, num_classes + 1),
            DeviceBoxCoder(tuple(float(w) for w in weights)),
            SyncFreeMatcher(iou, iou, allow_low_quality_matches=False),
        )
        for iou, weights in zip(iou_thresholds, box_coder_weights)
    ]
    mask_parts = _mask_branch(backbone, num_classes, pooled_levels, head_dim, norm_layer) if masks else {}
    return CascadeRoIHeads(
        ExactMultiScaleRoIAlign(pooled_levels, strides, 7, sampling_ratio=2),
        stages,
        SyncFreeSampler(batch_size_per_image, positive_fraction),
        score_thresh=score_thresh,
        nms_thresh=nms_thresh,
        detections_per_img=detections_per_img,
        **mask_parts,
    )


class FasterRCNN(RCNNDetector):
    """Faster R-CNN in the ViTDet configuration on a simple-feature-pyramid backbone.

    ``num_classes`` comes first so that a task can take ``Callable[[int], RCNNDetector]``: a YAML recipe gives
    the backbone and the knobs as init args and the datamodule's class count completes the call. For knobs not
    listed here, build the parts with :func:`build_rpn` / :func:`build_roi_heads` (or by hand) and pass them
    to :class:`RCNNDetector`.

    Args:
        num_classes: foreground classes K (labels 1..K).
        backbone: simple-feature-pyramid backbone (``out_channels``, ``strides``, ``size_divisibility``) with
            at least levels p2..p5; the RPN uses every level it returns.
        rpn_pre_nms_top_n: (train, test) proposals per level before NMS.
        rpn_post_nms_top_n: (train, test) proposals per image after NMS.
        roi_batch_size_per_image: RoIs sampled per image for the box losses (25 % positive at most).
        head_dim: channels of the box (and mask) head convs.
        fc_dim: width of the box head's fully connected layer.
        score_thresh: eval score threshold.
        nms_thresh: eval per-class NMS IoU.
        detections_per_img: eval detections kept per image.
    """

    # The RoI heads wired from the arguments below; MaskRCNN and CascadeMaskRCNN put theirs on the same RPN.
    roi_heads_builder: Callable[..., nn.Module] = staticmethod(
        functools.partial(build_roi_heads, masks=False)
    )

    def __init__(
        self,
        num_classes: int,
        backbone: nn.Module,
        *,
        rpn_pre_nms_top_n: tuple[int, int] = (2000, 1000),
        rpn_post_nms_top_n: tuple[int, int] = (1000, 1000),
        roi_batch_size_per_image: int = 512,
        head_dim: int = 256,
        fc_dim: int = 1024,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
    ) -> None:
        rpn = build_rpn(backbone, pre_nms_top_n=rpn_pre_nms_top_n, post_nms_top_n=rpn_post_nms_top_n)
        roi_heads = self.roi_heads_builder(
            backbone,
            num_classes,
            head_dim=head_dim,
            fc_dim=fc_dim,
            batch_size_per_image=roi_batch_size_per_image,
            score_thresh=score_thresh,
            nms_thresh=nms_thresh,
            detections_per_img=detections_per_img,
        )
        super().__init__(backbone, rpn, roi_heads)


class MaskRCNN(FasterRCNN):
    """Mask R-CNN in the ViTDet configuration: :class:`FasterRCNN` plus a 14x14-pooled, 4-conv mask head.

    Eval detections also carry ``masks`` float (N, 1, 28, 28) probabilities. Arguments as :class:`FasterRCNN`.
    """

    roi_heads_builder = staticmethod(functools.partial(build_roi_heads, masks=True))


class CascadeMaskRCNN(FasterRCNN):
    """Cascade Mask R-CNN in the ViTDet configuration: :class:`MaskRCNN`'s RPN and mask branch, with three
    cascade box stages (IoU 0.5, 0.6, 0.7) in place of its box head; see :func:`build_cascade_roi_heads`.

    Training losses: the RPN's, ``loss_classifier_stage{k}`` and ``loss_box_reg_stage{k}`` for k = 0, 1, 2,
    and ``loss_mask``. Eval detections as :class:`MaskRCNN`'s. Arguments as :class:`FasterRCNN`.
    """

    roi_heads_builder = staticmethod(build_cascade_roi_heads)
