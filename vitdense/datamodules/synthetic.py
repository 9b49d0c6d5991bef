"""The DataModules of the synthetic shapes sets, for demos and tests: COCO detection and semantic.

Each writes its set under ``root`` on first use (:mod:`~vitdense.datamodules.shapes_coco`,
:mod:`~vitdense.datamodules.shapes_semseg`) and reuses it while its parameters match.
"""

from __future__ import annotations

from typing import Any

from vitdense.datamodules.ade20k import ade20k_split_folders
from vitdense.datamodules.coco import CocoDataModule
from vitdense.datamodules.segmentation import SegmentationFolderDataModule
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

    The generated files are its training and validation splits (the test split is the validation split).

    Args:
        root: data folder (written on first use; reused when its parameters match).
        num_train: training images.
        num_val: validation images.
        seed: generator seed.
        image_size: training / evaluation side; the images are written at 224 px.
        batch_size: training batch size.
        num_workers: DataLoader workers.
        min_scale: defaults to 0.5 rather than COCO's 0.1, which would shrink 30 px shapes to 3 px.
        max_scale: largest jitter factor.
        Other arguments: as :class:`CocoDataModule`, with its defaults.
    """

    def __init__(
        self,
        root: str = "data/shapes",
        num_train: int = 200,
        num_val: int = 50,
        seed: int = 0,
        image_size: int = 224,
        batch_size: int = 4,
        num_workers: int = 2,
        min_scale: float = 0.5,
        max_scale: float = 1.5,
        **kwargs: Any,
    ) -> None:
        paths = prepared_shapes_coco(root, num_train=num_train, num_val=num_val, image_size=224, seed=seed)
        # The split files are the generated set's: named here, they are no arguments of this class.
        super().__init__(
            train_images=str(paths["train_images"]),
            train_annotations=str(paths["train_annotations"]),
            val_images=str(paths["val_images"]),
            val_annotations=str(paths["val_annotations"]),
            test_images=None,
            test_annotations=None,
            image_size=image_size,
            batch_size=batch_size,
            num_workers=num_workers,
            min_scale=min_scale,
            max_scale=max_scale,
            **kwargs,
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
        reduce_zero_label: ignore the background (see above).
        crop_size: training crop side.
        scale: ``(long, short)`` reference size of the resize.
        batch_size: training batch size.
        num_workers: DataLoader workers.
        Other arguments: as :class:`SegmentationFolderDataModule`, with its defaults.
    """

    def __init__(
        self,
        root: str = "data/shapes_semseg",
        num_train: int = 200,
        num_val: int = 40,
        seed: int = 0,
        reduce_zero_label: bool = False,
        crop_size: int = 224,
        scale: tuple[int, int] = (320, 240),
        batch_size: int = 8,
        num_workers: int = 2,
        **kwargs: Any,
    ) -> None:
        base = prepared_shapes_semseg(
            root, num_train=num_train, num_val=num_val, image_size=(240, 320), seed=seed
        )
        names = SHAPES_SEMSEG_CLASSES[1:] if reduce_zero_label else SHAPES_SEMSEG_CLASSES
        # The split folders and classes are the generated set's: named here, they are no arguments of this
        # class.
        folders = ade20k_split_folders(base)
        super().__init__(
            train_images=folders["train_images"],
            train_labels=folders["train_labels"],
            val_images=folders["val_images"],
            val_labels=folders["val_labels"],
            num_classes=len(names),
            test_images=None,
            test_labels=None,
            class_names=list(names),
            ignore_index=255,
            reduce_zero_label=reduce_zero_label,
            crop_size=crop_size,
            scale=scale,
            batch_size=batch_size,
            num_workers=num_workers,
            **kwargs,
        )
        self.root = root
