"""Data for vitdense: detection (COCO) and semantic segmentation datasets, transforms, DataModules."""

from vitdense.datamodules.ade20k import ADE20K_CLASSES, ADE20KDataModule, find_ade20k
from vitdense.datamodules.bad_data import BadDataError, CheckedDataset, Finding
from vitdense.datamodules.coco import CocoDataModule, CocoDetection, CocoFile, load_coco
from vitdense.datamodules.collate import collate_detection, collate_segmentation
from vitdense.datamodules.data_check import DataReport, SplitReport, check_data, check_datasets
from vitdense.datamodules.images import IMAGE_EXTENSIONS, read_image, to_rgb_array
from vitdense.datamodules.loading import EvaluationSampler, distributed_evaluation
from vitdense.datamodules.predict_images import (
    PredictImages,
    as_rgb_array,
    find_images,
    predict_sample,
    resolve_images,
)
from vitdense.datamodules.segmentation import SegmentationFolderDataModule
from vitdense.datamodules.segmentation_folder import SegmentationFolder
from vitdense.datamodules.segmentation_labels import LabelMapping, read_label
from vitdense.datamodules.segmentation_transforms import (
    CatMaxRatioCrop,
    PhotoMetricDistortion,
    RandomResizeKeepRatio,
    SegmentationEvalTransform,
    SegmentationTrainTransform,
    rescale_size,
)
from vitdense.datamodules.synthetic import (
    SHAPES_CATEGORIES,
    SHAPES_SEMSEG_CLASSES,
    ShapesDataModule,
    ShapesSegmentationDataModule,
    write_shapes_coco,
    write_shapes_semseg,
)
from vitdense.datamodules.transforms import (
    EvalTransform,
    LargeScaleJitter,
    TrainTransform,
    TransformOutput,
    boxes_from_masks,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "as_rgb_array",
    "find_images",
    "predict_sample",
    "resolve_images",
    "ADE20K_CLASSES",
    "SHAPES_CATEGORIES",
    "SHAPES_SEMSEG_CLASSES",
    "ADE20KDataModule",
    "BadDataError",
    "CheckedDataset",
    "CatMaxRatioCrop",
    "CocoDataModule",
    "CocoDetection",
    "CocoFile",
    "DataReport",
    "EvaluationSampler",
    "Finding",
    "SplitReport",
    "check_data",
    "check_datasets",
    "EvalTransform",
    "LabelMapping",
    "LargeScaleJitter",
    "PhotoMetricDistortion",
    "PredictImages",
    "RandomResizeKeepRatio",
    "SegmentationEvalTransform",
    "SegmentationFolder",
    "SegmentationFolderDataModule",
    "SegmentationTrainTransform",
    "ShapesDataModule",
    "ShapesSegmentationDataModule",
    "TrainTransform",
    "TransformOutput",
    "boxes_from_masks",
    "collate_detection",
    "collate_segmentation",
    "distributed_evaluation",
    "find_ade20k",
    "load_coco",
    "read_image",
    "read_label",
    "rescale_size",
    "to_rgb_array",
    "write_shapes_coco",
    "write_shapes_semseg",
]
