"""Semantic segmentation data: the DataModule of an image folder and a label-PNG folder per split.

A data set is a folder of images and a folder of label PNGs matched by file stem (relative path without
suffix, so nested folders work too). Label PNGs hold one class index per pixel (mode ``L`` or ``P``, read
as raw indices, never through the palette; 16-bit ``I;16``/``I`` for more than 255 classes). After the
optional reduce-zero-label mapping (0 -> ``ignore_index``, ``v`` -> ``v - 1``) labels are ``0..K-1`` or
``ignore_index`` (default 255), which marks ignored pixels and padding.

Samples (see :class:`SegmentationFolder`): training ``(image uint8 (3, C, C), {"label": int64 (C, C)})``;
evaluation ``(image uint8 (3, h, w), {"label": int64 (H0, W0), "orig_size", "image_size", "file_name"})``
with the image resized to fit ``scale`` and the label at the original resolution.
"""

from __future__ import annotations

from functools import partial

from vitdense.datamodules.bad_data import OnBadData, Policy
from vitdense.datamodules.collate import collate_segmentation
from vitdense.datamodules.loading import SplitDataModule, check_loading_arguments, check_size_multiple
from vitdense.datamodules.segmentation_folder import SegmentationFolder
from vitdense.datamodules.segmentation_labels import LabelMapping, read_label
from vitdense.datamodules.segmentation_transforms import SegmentationEvalTransform, SegmentationTrainTransform

__all__ = [
    "LabelMapping",
    "SegmentationFolder",
    "SegmentationFolderDataModule",
    "read_label",
]


class SegmentationFolderDataModule(SplitDataModule):
    """Semantic segmentation from an image folder and a label-PNG folder per split (matched by stem).

    Training uses the mmseg ADE20K pipeline (:class:`SegmentationTrainTransform`: random resize to
    ``scale x U(ratio_range)``, ``crop_size`` crop with ``cat_max_ratio``, flip, photometric distortion,
    padding); val/test/predict resize to fit ``scale`` (:class:`SegmentationEvalTransform`) and keep the
    label at the original resolution. Batches are padded by :func:`collate_segmentation` to multiples of
    ``size_divisibility``. ``num_classes``, ``class_names`` and ``ignore_index`` are set in ``__init__``
    (LightningCLI links ``num_classes`` into the model); the folders are scanned in ``setup``.

    Args:
        train_images: training image folder.
        train_labels: training label-PNG folder.
        val_images: validation image folder.
        val_labels: validation label-PNG folder.
        test_images: test image folder (default: ``val_images``).
        test_labels: test label folder (default: ``val_labels``).
        predict_images: an image file, a folder or a glob for ``predict``.
        predict_apply_exif: ``predict`` turns each image as its EXIF orientation says (how viewers show it,
            the default); False keeps the stored pixels, the frame of annotations made on them (training and
            evaluation follow the label PNGs' size whichever this is).
        num_classes: number of classes ``K`` (after ``reduce_zero_label``).
        class_names: ``K`` names (default ``"0"``, ``"1"``, ...).
        ignore_index: ignored / padding label, ``>= K``.
        reduce_zero_label: raw 0 -> ``ignore_index``, ``v`` -> ``v - 1`` (ADE20K).
        crop_size: training crop side ``C``; a multiple of ``size_divisibility`` (518 = 37 x 14).
        scale: ``(long, short)`` reference size of the resize (mmseg ADE20K ``(2048, 512)``).
        ratio_range: random factor range applied to ``scale`` in training.
        cat_max_ratio: largest share one class may take of a training crop (1 disables the check).
        batch_size: training batch size.
        eval_batch_size: val/test/predict batch size.
        num_workers: DataLoader workers (persistent when > 0).
        size_divisibility: batch sides are padded to a multiple of this (the ViT patch, 14).
        on_bad_data: ``"error"`` raises on the first bad record; ``"skip"`` drops, logs and counts them.
        check_data: before the first step, read every image and label PNG of the stage's splits once
            (:func:`~vitdense.datamodules.data_check.check_data`); ``"error"`` then fails with the whole
            report, ``"skip"`` logs it and trains without the bad pairs.
    """

    def __init__(
        self,
        train_images: str,
        train_labels: str,
        val_images: str,
        val_labels: str,
        num_classes: int,
        test_images: str | None = None,
        test_labels: str | None = None,
        predict_images: str | None = None,
        class_names: list[str] | None = None,
        ignore_index: int = 255,
        reduce_zero_label: bool = False,
        crop_size: int = 518,
        scale: tuple[int, int] = (2048, 512),
        ratio_range: tuple[float, float] = (0.5, 2.0),
        cat_max_ratio: float = 0.75,
        batch_size: int = 16,
        eval_batch_size: int = 1,
        num_workers: int = 4,
        size_divisibility: int = 14,
        on_bad_data: OnBadData = "error",
        check_data: bool = False,
        predict_apply_exif: bool = True,
    ) -> None:
        super().__init__()
        check_size_multiple("crop_size", crop_size, size_divisibility)
        LabelMapping(num_classes, ignore_index, reduce_zero_label)  # validates num_classes / ignore_index
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(
                f"class_names has {len(class_names)} names but num_classes={num_classes}; give one name "
                "per class"
            )
        if len(scale) != 2 or min(scale) <= 0:
            raise ValueError(f"scale={scale}: give (long, short) positive sides, e.g. (2048, 512)")
        if len(ratio_range) != 2 or not 0 < ratio_range[0] <= ratio_range[1]:
            raise ValueError(f"ratio_range={ratio_range}: need 0 < low <= high, e.g. (0.5, 2.0)")
        if not 0 < cat_max_ratio <= 1:
            raise ValueError(f"cat_max_ratio={cat_max_ratio}: need 0 < cat_max_ratio <= 1 (1 disables it)")
        check_loading_arguments(batch_size, eval_batch_size, num_workers, on_bad_data)
        self.save_hyperparameters()
        self.train_images = train_images
        self.train_labels = train_labels
        self.val_images = val_images
        self.val_labels = val_labels
        self.test_images = test_images if test_images is not None else val_images
        self.test_labels = test_labels if test_labels is not None else val_labels
        self.predict_images = predict_images
        self.num_classes = num_classes
        self.class_names = [str(i) for i in range(num_classes)] if class_names is None else list(class_names)
        self.ignore_index = ignore_index
        self.reduce_zero_label = reduce_zero_label
        self.crop_size = crop_size
        self.scale = (int(scale[0]), int(scale[1]))
        self.ratio_range = (float(ratio_range[0]), float(ratio_range[1]))
        self.cat_max_ratio = cat_max_ratio
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.size_divisibility = size_divisibility
        self.collate_fn = partial(collate_segmentation, size_divisibility=size_divisibility)
        self.on_bad_data = on_bad_data
        self.check_data = check_data
        self.predict_apply_exif = predict_apply_exif
        self.train_dataset: SegmentationFolder | None = None
        self.val_dataset: SegmentationFolder | None = None
        self.test_dataset: SegmentationFolder | None = None

    def split_source(self, split: str) -> tuple[str, str]:
        """``(image folder, label folder)`` of ``split`` (``"train"``, ``"val"`` or ``"test"``)."""
        return {
            "train": (self.train_images, self.train_labels),
            "val": (self.val_images, self.val_labels),
            "test": (self.test_images, self.test_labels),
        }[split]

    def split_dataset(self, split: str, on_bad_data: Policy) -> SegmentationFolder:
        """A new dataset of ``split``: the training transform for train, the evaluation one otherwise."""
        images, labels = self.split_source(split)
        if split == "train":
            transform = SegmentationTrainTransform(
                self.crop_size, self.scale, self.ratio_range, self.cat_max_ratio, self.ignore_index
            )
        else:
            transform = self.evaluation_transform()
        return SegmentationFolder(
            images,
            labels,
            transform,
            num_classes=self.num_classes,
            ignore_index=self.ignore_index,
            reduce_zero_label=self.reduce_zero_label,
            on_bad_data=on_bad_data,
            split=split,
        )

    def evaluation_transform(self) -> SegmentationEvalTransform:
        """The evaluation transform: resized to fit ``scale``, aspect kept."""
        return SegmentationEvalTransform(self.scale)
