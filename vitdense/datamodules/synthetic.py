"""The DataModules of the synthetic shapes sets, for demos and tests: COCO detection and semantic.

Each writes its set under ``root`` on first use (:mod:`~vitdense.datamodules.shapes_coco`,
:mod:`~vitdense.datamodules.shapes_semseg`) and reuses it while its parameters match.
"""

from __future__ import annotations

from vitdense.datamodules.ade20k import ade20k_split_folders
from vitdense.datamodules.bad_data import OnBadData
from vitdense.datamodules.coco import CocoDataModule
from vitdense.datamodules.segmentation import SegmentationFolderDataModule, pipeline_options
from vitdense.datamodules.shapes import SHAPES_CATEGORIES
from vitdense.datamodules.shapes_coco import prepared_shapes_coco, write_shapes_coco
from vitdense.datamodules.shapes_semseg import (
    SHAPES_SEMSEG_CLASSES,
    prepared_shapes_semseg,
    write_shapes_semseg,
)

__all__ = [
    "SHAPES_CATEGORIES",
    "SHAPES_SEMSEG_CLASSES",
    "ShapesDataModule",
    "ShapesSegmentationDataModule",
    "write_shapes_coco",
    "write_shapes_semseg",
]


class ShapesDataModule(CocoDataModule):
    """:class:`CocoDataModule` on the synthetic shapes set, written under ``root`` if missing or stale.

    Args:
        root: data folder (written on first use; reused when its parameters match).
        num_train: training images.
        num_val: validation images.
        seed: generator seed.
        min_scale: defaults to 0.5 rather than COCO's 0.1, which would shrink 30 px shapes to 3 px.
        max_scale: largest jitter factor.
        Other arguments: as :class:`CocoDataModule`; images are written at 224 px.
    """

    def __init__(
        self,
        root: str = "data/shapes",
        num_train: int = 200,
        num_val: int = 50,
        seed: int = 0,
        predict_images: str | None = None,
        image_size: int = 224,
        size_divisibility: int = 56,
        batch_size: int = 4,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        masks: bool = True,
        keep_empty_images: bool = True,
        min_scale: float = 0.5,
        max_scale: float = 1.5,
        on_bad_data: OnBadData = "error",
        check_data: bool = False,
    ) -> None:
        paths = prepared_shapes_coco(root, num_train=num_train, num_val=num_val, image_size=224, seed=seed)
        super().__init__(
            train_images=str(paths["train_images"]),
            train_annotations=str(paths["train_annotations"]),
            val_images=str(paths["val_images"]),
            val_annotations=str(paths["val_annotations"]),
            predict_images=predict_images,
            image_size=image_size,
            size_divisibility=size_divisibility,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            masks=masks,
            keep_empty_images=keep_empty_images,
            min_scale=min_scale,
            max_scale=max_scale,
            on_bad_data=on_bad_data,
            check_data=check_data,
        )
        self.root = root


class ShapesSegmentationDataModule(SegmentationFolderDataModule):
    """:class:`SegmentationFolderDataModule` on the semantic shapes set, written under ``root`` if missing.

    Images are 240 x 320 (h x w); the defaults scale the mmseg pipeline down for a cheap CPU demo:
    ``scale=(320, 240)`` (eval images keep their size), random resize ``x [0.5, 2]`` and 224 = 16 x 14
    crops.

    Background is kept as class 0 by default (``reduce_zero_label=False``: 5 classes, ``"background"``
    first): unlike ADE20K's "other", it is one well-defined textured region, and learning it makes the
    demo's mIoU cover every pixel. With ``reduce_zero_label=True`` it is ignored instead and the 4 shapes
    are classes 0..3, the ADE20K convention.

    Args:
        root: data folder; the set lives in ``root/ADEChallengeData2016`` (reused when its stamp matches).
        num_train: training images.
        num_val: validation images.
        seed: generator seed.
        Other arguments: as :class:`SegmentationFolderDataModule`.
    """

    def __init__(
        self,
        root: str = "data/shapes_semseg",
        num_train: int = 200,
        num_val: int = 40,
        seed: int = 0,
        predict_images: str | None = None,
        reduce_zero_label: bool = False,
        crop_size: int = 224,
        scale: tuple[int, int] = (320, 240),
        ratio_range: tuple[float, float] = (0.5, 2.0),
        cat_max_ratio: float = 0.75,
        batch_size: int = 8,
        eval_batch_size: int = 1,
        num_workers: int = 2,
        size_divisibility: int = 14,
        on_bad_data: OnBadData = "error",
        check_data: bool = False,
    ) -> None:
        base = prepared_shapes_semseg(
            root, num_train=num_train, num_val=num_val, image_size=(240, 320), seed=seed
        )
        names = SHAPES_SEMSEG_CLASSES[1:] if reduce_zero_label else SHAPES_SEMSEG_CLASSES
        super().__init__(
            **ade20k_split_folders(base),
            num_classes=len(names),
            class_names=list(names),
            ignore_index=255,
            reduce_zero_label=reduce_zero_label,
            **pipeline_options(locals()),
        )
        self.root = root
