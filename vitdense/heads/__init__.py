"""Detection heads for simple-feature-pyramid ViTs: exact-stride anchors and RoIAlign, Faster / Mask R-CNN."""

from vitdense.heads.anchor_generator import StrideAnchorGenerator, default_anchor_sizes
from vitdense.heads.builders import (
    FasterRCNN,
    MaskRCNN,
    build_roi_heads,
    build_rpn,
    layer_norm_2d,
)
from vitdense.heads.detector import RCNNDetector, paste_detections
from vitdense.heads.roi_align import ExactMultiScaleRoIAlign, roi_align, roi_align_gather

__all__ = [
    "ExactMultiScaleRoIAlign",
    "FasterRCNN",
    "MaskRCNN",
    "RCNNDetector",
    "StrideAnchorGenerator",
    "build_roi_heads",
    "build_rpn",
    "default_anchor_sizes",
    "layer_norm_2d",
    "paste_detections",
    "roi_align",
    "roi_align_gather",
]
