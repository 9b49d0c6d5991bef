"""One split of a COCO-format data set as a dataset of transformed samples."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from vitdense.datamodules.bad_data import DECODE_ERRORS, Finding, Policy
from vitdense.datamodules.bad_data import SKIP_HINT as _SKIP_HINT
from vitdense.datamodules.coco_checks import InstanceRecord
from vitdense.datamodules.coco_file import (
    categories_of,
    check_box_format,
    check_has_segmentations,
    check_pixel_units,
    collector_paused,
    load_coco,
)
from vitdense.datamodules.coco_records import CocoRecordChecks
from vitdense.datamodules.images import image_conversions, read_image
from vitdense.datamodules.instance_masks import InstanceMasks
from vitdense.datamodules.packed import PackedRecords
from vitdense.datamodules.transforms import EvalTransform, TrainTransform

__all__ = ["CocoDetection", "decode_masks"]


def decode_masks(instances: list[InstanceRecord], h: int, w: int) -> InstanceMasks:
    """Rasterise instance segmentations (polygons, compressed or uncompressed RLE) over their own boxes.

    Returns:
        The masks in the annotation frame, each decoded only over its tight box (no ``(N, h, w)`` array).
    """
    rles = []
    for inst in instances:
        seg = inst.segmentation
        if isinstance(seg, list):
            rles.append(mask_utils.merge(mask_utils.frPyObjects(seg, h, w)))
        elif isinstance(seg["counts"], list):
            rles.append(mask_utils.frPyObjects(seg, h, w))
        else:
            rles.append(seg)
    return InstanceMasks.from_rles(rles, h, w)


class CocoDetection(CocoRecordChecks):
    """One split of a COCO-format data set, validated once at construction.

    Yields ``(image, target)``: ``image`` ``uint8`` ``(3, S, S)`` RGB, content top-left, zero padding
    bottom/right; ``target`` has ``"image_id"`` (COCO id), ``"boxes"`` ``float32`` ``(N, 4)`` xyxy absolute
    pixels in the canvas frame, ``"labels"`` ``int64`` ``(N,)`` in ``1..K``, ``"masks"`` ``uint8``
    ``(N, S, S)`` (only when ``masks=True``), ``"orig_size"`` ``(h, w)`` of the file, ``"scale"`` (canvas =
    original * scale) and ``"image_size"`` ``(h, w)`` of the valid region. Crowd annotations never
    appear in targets; they stay in ``.coco`` for evaluation.

    Bad records found at construction: malformed image or annotation records, duplicate image or
    annotation ids, missing images, images outside ``images_root`` (unless ``allow_outside_images``), image
    records sharing one file, images smaller than one 14 px patch or larger than Pillow decodes, images with
    more than ``max_objects_per_image`` objects (training), annotations of unknown images or categories, an
    ``iscrowd`` other than 0 or 1, malformed / zero-area / negative / outside boxes, boxes and polygons
    reaching far outside the image (corrupt coordinates, which could also exhaust pycocotools' memory) and
    (with ``masks``) malformed segmentations, polygons without 3 points and RLE of another size than the
    image; on an evaluation split also what COCOeval could not score (``evaluation``). When loaded: an
    image that does not decode or whose size differs from its record. Under ``on_bad_data="error"`` they
    raise :class:`BadDataError` naming the file and the record; under ``"skip"`` they are dropped, logged
    once each and counted in ``skipped`` by kind, and a record that fails to load is replaced by the next
    one, or on an ``evaluation`` split yields None, which :func:`collate_detection` drops (the image is then
    not scored; counts made in DataLoader workers stay in those processes). An image whose annotations were
    all dropped is not kept as a negative. Other image modes (grayscale, alpha, palette, 16-bit, float) and
    EXIF orientations are converted on load.

    Args:
        images_root: folder that ``file_name`` (which may contain sub-folders) is relative to.
        annotation_file: the COCO JSON.
        transform: :class:`TrainTransform` or :class:`EvalTransform`.
        category_ids: the label mapping (default: this file's categories); pass the training split's.
        coco: the already parsed ``annotation_file``, to avoid parsing it twice.
        masks: decode instance masks into the targets.
        keep_empty_images: keep images without annotations (as negatives); never those whose annotations are
            all crowd regions (as detectron2), except on an ``evaluation`` split.
        evaluation: the split is scored by COCOeval for box AP (``"bbox"``) or box and mask AP (``"segm"``)
            against ``.coco``: every annotation, crowd regions included, is also checked as pycocotools reads
            it (see :meth:`_check_ground_truth`), and annotations dropped as bad leave ``.coco`` too.
        on_bad_data: ``"error"``, ``"skip"`` or ``"collect"`` (see :class:`CheckedDataset`).
        allow_outside_images: read a ``file_name`` that leaves ``images_root`` (an absolute path, or one
            climbing out with ``..``); by default such a record is bad, as it reads files the folder argument
            does not name. A link inside the folder that points elsewhere is always read.
        max_objects_per_image: a training image with more objects (non-crowd annotations) is bad: each costs
            its sample a mask of the whole canvas and the RPN an anchor-matching row (100k objects on one
            image ask ~100 GB). Evaluation splits are not limited.
    """

    def __init__(
        self,
        images_root: str | Path,
        annotation_file: str | Path,
        transform: TrainTransform | EvalTransform,
        *,
        category_ids: list[int] | None = None,
        coco: COCO | None = None,
        masks: bool = False,
        keep_empty_images: bool = True,
        evaluation: Literal["bbox", "segm"] | None = None,
        on_bad_data: Policy = "error",
        allow_outside_images: bool = False,
        max_objects_per_image: int = 1000,
    ) -> None:
        super().__init__(on_bad_data)
        if evaluation not in (None, "bbox", "segm"):
            raise ValueError(f"evaluation={evaluation!r}; use None, 'bbox' or 'segm'")
        if max_objects_per_image < 1:
            raise ValueError(f"max_objects_per_image={max_objects_per_image}; it must be >= 1")
        self.evaluation = evaluation
        self.allow_outside_images = allow_outside_images
        self.max_objects_per_image = max_objects_per_image
        self.replace_bad = evaluation is None  # an evaluated replacement would be scored twice
        self.images_root = Path(images_root)
        self.annotation_file = Path(annotation_file)
        self.source = str(self.annotation_file)
        self.transform = transform
        self.masks = masks
        self.keep_empty_images = keep_empty_images
        self.coco = coco if coco is not None else load_coco(annotation_file)
        check_pixel_units(self.coco, self.annotation_file)
        check_box_format(self.coco, self.annotation_file)
        if masks or evaluation == "segm":
            check_has_segmentations(self.coco, self.annotation_file)
        file_ids, file_names = categories_of(self.coco, annotation_file, warn=category_ids is None)
        if category_ids is None:
            self.category_ids, self.class_names = file_ids, file_names
        else:
            names = dict(zip(file_ids, file_names))
            self.category_ids = list(category_ids)
            self.class_names = [names.get(i, str(i)) for i in self.category_ids]
        with collector_paused():
            records = self._build_records()
        self._instance_counts = np.asarray([len(r.instances) for r in records], dtype=np.int64)
        # Packed: DataLoader workers then share the records instead of copying them (see PackedRecords).
        self._records = PackedRecords(records)
        self.image_ids = [r.image_id for r in records]  # not from the packed ones: each read unpickles
        self._log_skips()

    def __len__(self) -> int:
        return len(self._records)

    @property
    def num_objects(self) -> int:
        """Objects of the kept images: those training learns from, or on an ``evaluation`` split the non-crowd
        ground truth that AP scores (without any, COCOeval reports -1 and a run would still exit 0)."""
        if self.evaluation is None:
            return int(self._instance_counts.sum())
        kept = set(self.image_ids)
        annotations = self.coco.dataset["annotations"]
        return sum(1 for ann in annotations if ann["image_id"] in kept and not ann.get("iscrowd", 0))

    def _where(self, index: int) -> tuple[str, str]:
        rec = self._records[index]
        return rec.path, f"image id {rec.image_id}"

    def _keep(self, indices: list[int]) -> None:
        self._records = PackedRecords(self._records[i] for i in indices)
        self._instance_counts = self._instance_counts[indices]
        self.image_ids = [r.image_id for r in self._records]

    def _read(self, index: int) -> tuple[np.ndarray, InstanceMasks | None]:
        rec = self._records[index]
        record = f"image id {rec.image_id}"
        try:
            image = read_image(rec.path, expected_hw=(rec.height, rec.width))
        except DECODE_ERRORS as exc:
            raise self._error(
                "corrupt_image",
                f"{rec.path} ({record}) cannot be decoded ({type(exc).__name__}: {exc}); replace the file or "
                f"remove its record from {self.annotation_file}, {_SKIP_HINT}",
                rec.path,
                record,
            ) from exc
        if image.shape[:2] != (rec.height, rec.width):
            raise self._error(
                "size_mismatch",
                f"{rec.path} ({record}) is {image.shape[0]}x{image.shape[1]} (h x w) but "
                f"{self.annotation_file} says {rec.height}x{rec.width}; fix the image record or the file, "
                f"{_SKIP_HINT}",
                rec.path,
                record,
            )
        masks = decode_masks(rec.instances, rec.height, rec.width) if self.masks else None
        return image, masks

    def _notes(self, index: int) -> list[Finding]:
        rec = self._records[index]
        record = f"image id {rec.image_id}"
        return [
            Finding(kind, f"{rec.path} ({record}) {what}", rec.path, record, severity="note")
            for kind, what in image_conversions(rec.path, expected_hw=(rec.height, rec.width))
        ]

    def _sample(
        self, index: int, data: tuple[np.ndarray, InstanceMasks | None], seed: int | None
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        rec = self._records[index]
        image, masks = data
        n = len(rec.instances)
        boxes = np.asarray([inst.box for inst in rec.instances], dtype=np.float32).reshape(n, 4)
        labels = np.asarray([inst.label for inst in rec.instances], dtype=np.int64)
        out = self.transform(image, boxes, labels, masks, seed)
        target: dict[str, Any] = {
            "image_id": rec.image_id,
            "boxes": out.boxes,
            "labels": out.labels,
            "orig_size": (rec.height, rec.width),
            "scale": out.scale,
            "image_size": out.image_size,
        }
        if self.masks:
            target["masks"] = out.masks
        return out.image, target
