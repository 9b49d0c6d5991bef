"""LightningModules: losses, metrics, logging and optimizer construction around the ``torch.nn`` parts."""

from vitdense.tasks.base import VitDenseTask
from vitdense.tasks.callbacks import (
    LatestCheckpoint,
    StepProgressBar,
    ThroughputLogger,
    ValidateFinalStep,
    ValidationImageLogger,
)
from vitdense.tasks.checkpoint_io import SafeCheckpointIO
from vitdense.tasks.coco_evaluator import CocoEvaluator
from vitdense.tasks.detection import DetectionTask
from vitdense.tasks.label_space import LabelSpace
from vitdense.tasks.optim import (
    WarmupCosineLR,
    WarmupMultiStepLR,
    WarmupPolyLR,
    apply_lr_scale,
    layer_decay_param_groups,
)
from vitdense.tasks.segmentation import SemanticSegmentationTask
from vitdense.tasks.segmentation_metrics import format_class_table, segmentation_scores
from vitdense.tasks.task_contract import DenseTask

__all__ = [
    "CocoEvaluator",
    "DenseTask",
    "DetectionTask",
    "LabelSpace",
    "LatestCheckpoint",
    "SafeCheckpointIO",
    "SemanticSegmentationTask",
    "StepProgressBar",
    "ThroughputLogger",
    "ValidateFinalStep",
    "ValidationImageLogger",
    "VitDenseTask",
    "WarmupCosineLR",
    "WarmupMultiStepLR",
    "WarmupPolyLR",
    "apply_lr_scale",
    "format_class_table",
    "layer_decay_param_groups",
    "segmentation_scores",
]
