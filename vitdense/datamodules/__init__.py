"""COCO-format data for vitdense: datasets, transforms, collation and LightningDataModules."""

from vitdense.datamodules.coco import (
    BadDataError,
    CocoDataModule,
    CocoDetection,
    PredictImages,
    load_coco,
    read_image,
    to_rgb_array,
)
from vitdense.datamodules.collate import collate_detection
from vitdense.datamodules.synthetic import SHAPES_CATEGORIES, ShapesDataModule, write_shapes_coco
from vitdense.datamodules.transforms import (
    EvalTransform,
    LargeScaleJitter,
    TrainTransform,
    TransformOutput,
    boxes_from_masks,
)

__all__ = [
    "SHAPES_CATEGORIES",
    "BadDataError",
    "CocoDataModule",
    "CocoDetection",
    "EvalTransform",
    "LargeScaleJitter",
    "PredictImages",
    "ShapesDataModule",
    "TrainTransform",
    "TransformOutput",
    "boxes_from_masks",
    "collate_detection",
    "load_coco",
    "read_image",
    "to_rgb_array",
    "write_shapes_coco",
]
