"""The COCO-format DataModule: train / val / test / predict splits for Faster and Mask R-CNN.

Labels are contiguous ``1..K`` (0 is background, the torchvision R-CNN convention); label ``L`` is
category id ``category_ids[L - 1]`` (ids sorted ascending; they may include 0 and have gaps). The parts:
:mod:`~vitdense.datamodules.coco_file` (parsing, whole-file checks), :mod:`~vitdense.datamodules.coco_checks`
and :mod:`~vitdense.datamodules.coco_records` (per-record validation),
:mod:`~vitdense.datamodules.coco_ground_truth` (evaluation ground truth) and
:mod:`~vitdense.datamodules.coco_dataset` (the dataset).
"""

from __future__ import annotations

from functools import partial

from pycocotools.coco import COCO

from vitdense.datamodules.bad_data import BadDataError, Finding, OnBadData, Policy
from vitdense.datamodules.coco_dataset import CocoDetection
from vitdense.datamodules.coco_file import CocoFile, categories_of, load_coco
from vitdense.datamodules.collate import collate_detection
from vitdense.datamodules.loading import SplitDataModule, check_loading_arguments, check_size_multiple
from vitdense.datamodules.transforms import EvalTransform, TrainTransform

__all__ = [
    "CocoDataModule",
    "CocoDetection",
    "CocoFile",
    "load_coco",
]


class CocoDataModule(SplitDataModule):
    """COCO-format train / val / test / predict data for Faster and Mask R-CNN.

    Training uses horizontal flip + ViTDet large-scale jitter (:class:`TrainTransform`) to a fixed
    ``image_size`` canvas; val/test/predict resize the longest side to ``image_size`` and pad
    (:class:`EvalTransform`). ``num_classes``, ``class_names`` and ``category_ids`` come from the training
    annotation file, read once in ``__init__`` (so LightningCLI can link ``num_classes`` into the model)
    and reused for the training dataset.

    Args:
        train_images: folder the training ``file_name`` entries are relative to.
        train_annotations: training COCO JSON.
        val_images: folder for the validation images.
        val_annotations: validation COCO JSON.
        test_images: test image folder (default: ``val_images``).
        test_annotations: test COCO JSON (default: ``val_annotations``).
        predict_images: an image file, a folder or a glob for ``predict``.
        predict_apply_exif: ``predict`` turns each image as its EXIF orientation says (how viewers show it,
            the default); False keeps the stored pixels, the frame of annotations made on them (training and
            evaluation follow the annotations' width/height whichever this is).
        image_size: canvas side ``S``; a multiple of ``size_divisibility``.
        size_divisibility: batch sides are padded to a multiple of this (56 = 4 x patch 14).
        batch_size: training batch size.
        eval_batch_size: val/test/predict batch size (default: ``batch_size``).
        num_workers: DataLoader workers (persistent when > 0).
        masks: put instance masks in the training targets (Mask R-CNN).
        keep_empty_images: keep training images without annotations as negatives (never crowd-only ones).
        min_scale: smallest large-scale-jitter factor.
        max_scale: largest large-scale-jitter factor.
        on_bad_data: ``"error"`` raises on the first bad record; ``"skip"`` drops, logs and counts them.
        check_data: before the first step, read every record of the stage's splits once
            (:func:`~vitdense.datamodules.data_check.check_data`); ``"error"`` then fails with the whole
            report, ``"skip"`` logs it and trains without the bad records.
        keep_background_category: keep a never-annotated background-named category (labelme's
            ``_background_``) as a class, as checkpoints trained with it as a class need.
        allow_outside_images: read image records whose ``file_name`` leaves the split's images folder (an
            absolute path, or one climbing out with ``..``); by default each is a bad record.
        max_objects_per_image: a training image with more objects is a bad record (each object costs the
            sample a full-canvas mask and the RPN a row of anchor matching); tile such images, or raise it.
    """

    def __init__(
        self,
        train_images: str,
        train_annotations: str,
        val_images: str,
        val_annotations: str,
        test_images: str | None = None,
        test_annotations: str | None = None,
        predict_images: str | None = None,
        image_size: int = 1008,
        size_divisibility: int = 56,
        batch_size: int = 2,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        masks: bool = True,
        keep_empty_images: bool = True,
        min_scale: float = 0.1,
        max_scale: float = 2.0,
        on_bad_data: OnBadData = "error",
        check_data: bool = False,
        keep_background_category: bool = False,
        predict_apply_exif: bool = True,
        allow_outside_images: bool = False,
        max_objects_per_image: int = 1000,
    ) -> None:
        super().__init__()
        check_size_multiple("image_size", image_size, size_divisibility)
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale; got {min_scale=}, {max_scale=}")
        check_loading_arguments(batch_size, eval_batch_size, num_workers, on_bad_data)
        if max_objects_per_image < 1:
            raise ValueError(f"max_objects_per_image={max_objects_per_image}; it must be >= 1")
        self.save_hyperparameters()
        self.train_images = train_images
        self.train_annotations = train_annotations
        self.val_images = val_images
        self.val_annotations = val_annotations
        self.test_images = test_images if test_images is not None else val_images
        self.test_annotations = test_annotations if test_annotations is not None else val_annotations
        self.predict_images = predict_images
        self.image_size = image_size
        self.size_divisibility = size_divisibility
        self.collate_fn = partial(collate_detection, size_divisibility=size_divisibility)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size if eval_batch_size is not None else batch_size
        self.num_workers = num_workers
        self.masks = masks
        self.keep_empty_images = keep_empty_images
        self.min_scale = min_scale
        self.max_scale = max_scale
        self.on_bad_data = on_bad_data
        self.check_data = check_data
        self.predict_apply_exif = predict_apply_exif
        self.allow_outside_images = allow_outside_images
        self.max_objects_per_image = max_objects_per_image

        # Parsed once: the training file can be ~450 MB (COCO train2017); the train dataset reuses it.
        self._train_coco: COCO | None = load_coco(train_annotations)
        self._category_ids, self._class_names = categories_of(
            self._train_coco, train_annotations, keep_background_category
        )
        annotations = self._train_coco.dataset["annotations"]
        self._trained_category_ids = {ann["category_id"] for ann in annotations if not ann.get("iscrowd")}
        self.train_dataset: CocoDetection | None = None
        self.val_dataset: CocoDetection | None = None
        self.test_dataset: CocoDetection | None = None

    @property
    def num_classes(self) -> int:
        """Number of foreground classes ``K`` (labels are ``1..K``, 0 is background)."""
        return len(self._category_ids)

    @property
    def class_names(self) -> list[str]:
        """Name of label ``L`` at index ``L - 1``."""
        return list(self._class_names)

    @property
    def category_ids(self) -> list[int]:
        """COCO category id of label ``L`` at index ``L - 1``."""
        return list(self._category_ids)

    def split_source(self, split: str) -> tuple[str, str]:
        """``(images folder, annotation file)`` of ``split`` (``"train"``, ``"val"`` or ``"test"``)."""
        return {
            "train": (self.train_images, self.train_annotations),
            "val": (self.val_images, self.val_annotations),
            "test": (self.test_images, self.test_annotations),
        }[split]

    def split_dataset(self, split: str, on_bad_data: Policy) -> CocoDetection:
        """A new dataset of ``split``: training transform and masks for train, evaluation ones otherwise.

        The training dataset keeps only its packed records: its parsed file (``.coco``, and the one parsed in
        ``__init__``) is let go once they are built, as training never reads it again (on COCO train2017's
        scale ~2.8 GB of Python objects per rank, which every full garbage collection walks); a later
        training dataset parses the file again. An evaluation split keeps its ``.coco``, which COCOeval
        scores against.
        """
        images, annotations = self.split_source(split)
        if split == "train":
            dataset = CocoDetection(
                images,
                annotations,
                TrainTransform(self.image_size, self.min_scale, self.max_scale),
                category_ids=self._category_ids,
                coco=self._train_coco,
                masks=self.masks,
                keep_empty_images=self.keep_empty_images,
                on_bad_data=on_bad_data,
                allow_outside_images=self.allow_outside_images,
                max_objects_per_image=self.max_objects_per_image,
            )
            self._train_coco = None
            dataset.coco = None
            return dataset
        coco = load_coco(annotations)
        self._check_categories(coco, annotations, split)
        dataset = CocoDetection(
            images,
            annotations,
            self.evaluation_transform(),
            category_ids=self._category_ids,
            coco=coco,
            masks=False,
            keep_empty_images=True,  # evaluation covers every image of the file
            evaluation="segm" if self.masks else "bbox",
            on_bad_data=on_bad_data,
            allow_outside_images=self.allow_outside_images,
        )
        dataset.note_untrained_classes(self._trained_category_ids, self.train_annotations)
        return dataset

    def _check_categories(self, coco: COCO, annotation_file: str, split: str) -> None:
        """Raise when ``split``'s file gives a training category id another name, or leaves out one its
        annotations use: COCOeval would score the detections of that class against other objects, or not
        at all. Categories of the training file that the split lacks and never uses are fine (a subset).

        Raises:
            BadDataError: under every policy, naming both files and the differing ids.
        """
        ids, names = categories_of(coco, annotation_file, keep_background_category=True, warn=False)
        theirs = dict(zip(ids, names, strict=True))
        used = {ann.get("category_id") for ann in coco.dataset["annotations"]}
        differences = []
        for category_id, name in zip(self._category_ids, self._class_names, strict=True):
            if category_id in theirs and theirs[category_id] != name:
                differences.append(f"id {category_id} is {theirs[category_id]!r} there, {name!r} in training")
            elif category_id not in theirs and category_id in used:
                differences.append(f"id {category_id} ({name!r} in training) is annotated but not a category")
        if differences:
            shown = "; ".join(differences[:10]) + ("; ..." if len(differences) > 10 else "")
            message = (
                f"{annotation_file} (the {split} annotations) and the training file {self.train_annotations} "
                f"disagree on categories: {shown}; give the {split} file the training file's categories "
                "(same id, same name), or remap its category ids"
            )
            raise BadDataError(
                message, Finding("category_mismatch", message, str(annotation_file), "categories")
            )

    def evaluation_transform(self) -> EvalTransform:
        """The evaluation transform: longest side resized to ``image_size``, padded to a square."""
        return EvalTransform(self.image_size)
