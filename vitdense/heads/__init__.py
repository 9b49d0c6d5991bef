"""Heads for simple-feature-pyramid ViTs.

Detection: exact-stride anchors and RoIAlign, Faster / Mask R-CNN, Cascade Mask R-CNN. Semantic segmentation:
Semantic FPN, UperNet, linear probe, FCN auxiliary head, and whole / sliding-window / multi-scale + flip
inference.
"""

from vitdense.heads.anchor_generator import StrideAnchorGenerator, default_anchor_sizes
from vitdense.heads.box_coder import DeviceBoxCoder
from vitdense.heads.builders import (
    CascadeMaskRCNN,
    FasterRCNN,
    MaskRCNN,
    build_cascade_roi_heads,
    build_roi_heads,
    build_rpn,
    layer_norm_2d,
)
from vitdense.heads.cascade_roi_heads import (
    CascadeRoIHeads,
    CascadeStage,
    ClassAgnosticBoxPredictor,
    StageOutput,
)
from vitdense.heads.detector import RCNNDetector, paste_detections
from vitdense.heads.fcn_head import FCNHead
from vitdense.heads.linear_head import LinearHead
from vitdense.heads.mask_paste import paste_masks
from vitdense.heads.matcher import SyncFreeMatcher
from vitdense.heads.pyramid_pooling import PyramidPoolingModule
from vitdense.heads.roi_align import ExactMultiScaleRoIAlign, roi_align, roi_align_gather
from vitdense.heads.roi_heads import AlignedRoIHeads
from vitdense.heads.sampler import SyncFreeSampler
from vitdense.heads.segmentation_inference import (
    SingleScaleInference,
    multi_scale_flip_inference,
    slide_inference,
    sliding_windows,
    whole_inference,
)
from vitdense.heads.segmenter import LinearSegmenter, PyramidSegmenter, Segmenter, UperNetSegmenter
from vitdense.heads.semantic_fpn_head import SemanticFPNHead, group_norm_32
from vitdense.heads.upernet_head import UperNetHead

__all__ = [
    "AlignedRoIHeads",
    "CascadeMaskRCNN",
    "CascadeRoIHeads",
    "CascadeStage",
    "ClassAgnosticBoxPredictor",
    "DeviceBoxCoder",
    "ExactMultiScaleRoIAlign",
    "FCNHead",
    "FasterRCNN",
    "LinearHead",
    "LinearSegmenter",
    "MaskRCNN",
    "PyramidPoolingModule",
    "PyramidSegmenter",
    "RCNNDetector",
    "Segmenter",
    "SemanticFPNHead",
    "SingleScaleInference",
    "StageOutput",
    "StrideAnchorGenerator",
    "SyncFreeMatcher",
    "SyncFreeSampler",
    "UperNetHead",
    "UperNetSegmenter",
    "build_cascade_roi_heads",
    "build_roi_heads",
    "build_rpn",
    "default_anchor_sizes",
    "group_norm_32",
    "layer_norm_2d",
    "multi_scale_flip_inference",
    "paste_detections",
    "paste_masks",
    "roi_align",
    "roi_align_gather",
    "slide_inference",
    "sliding_windows",
    "whole_inference",
]
