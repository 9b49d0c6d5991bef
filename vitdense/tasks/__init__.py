"""LightningModules: losses, metrics, logging and optimizer construction around the ``torch.nn`` parts."""

from vitdense.tasks.coco_evaluator import CocoEvaluator
from vitdense.tasks.detection import DetectionTask
from vitdense.tasks.optim import WarmupCosineLR, WarmupMultiStepLR, apply_lr_scale, layer_decay_param_groups

__all__ = [
    "CocoEvaluator",
    "DetectionTask",
    "WarmupCosineLR",
    "WarmupMultiStepLR",
    "apply_lr_scale",
    "layer_decay_param_groups",
]
