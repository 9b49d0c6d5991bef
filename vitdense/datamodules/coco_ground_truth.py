"""The ground truth of an evaluated COCO split: annotations made scorable by COCOeval, or reported."""

from __future__ import annotations

import contextlib
import io
import logging
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from vitdense.datamodules.bad_data import CheckedDataset
from vitdense.datamodules.coco_checks import (
    ImageRecord,
    check_segmentation,
    clipped_xyxy,
    far_box,
    is_number,
    iscrowd_problem,
    malformed_box,
    segmentation_off_its_box,
)

__all__ = ["CocoGroundTruth"]

logger = logging.getLogger(__name__)


class CocoGroundTruth(CheckedDataset):
    """What an ``evaluation`` split of a COCO file does to its ``.coco``, which COCOeval scores against.

    Attributes read (set by the dataset): ``coco`` (the parsed file), ``annotation_file``, ``evaluation``
    (``"bbox"``, ``"segm"`` or None for a training split), ``category_ids`` and ``class_names``.
    """

    coco: COCO
    annotation_file: Path
    evaluation: Literal["bbox", "segm"] | None
    category_ids: list[int]
    class_names: list[str]

    def _check_ground_truth(self, ann: dict[str, Any], rec: ImageRecord) -> tuple[str, str] | None:
        """Make ``ann`` scorable by COCOeval, or return ``(kind, what is wrong and the fix)``.

        COCOeval reads every annotation of an evaluated image, crowd regions included: ``bbox``, ``iscrowd``,
        ``area`` and, for mask AP, the segmentation through ``COCO.annToRLE``. A missing ``iscrowd`` (0) or
        ``area`` (of the segmentation where pycocotools reads one, else of the box, as in COCO) is filled
        in, with a note. For mask AP, polygon parts that pycocotools cannot read are dropped as in training
        (noted); what pycocotools reads is left as it is, so scores stay those of the official evaluation.
        """
        record = f"annotation id {ann['id']}"

        def note(kind: str, what: str) -> None:
            message = f"{self.annotation_file}: {record} (image id {rec.image_id}) {what}"
            self._note(kind, message, file=self.annotation_file, record=record)

        if "iscrowd" not in ann:
            ann["iscrowd"] = 0
            note("iscrowd_missing", "has no 'iscrowd': evaluated as 0 (an object, not a crowd region)")
        elif (problem := iscrowd_problem(ann)) is not None:
            return problem
        bbox = ann.get("bbox")
        if (problem := malformed_box(bbox)) is not None:
            return problem
        if (problem := far_box(bbox, rec.height, rec.width)) is not None:
            return problem
        area_ok = is_number(ann.get("area")) and ann["area"] >= 0
        rle = None
        if self.evaluation == "segm" or not area_ok:
            if "segmentation" not in ann and self.evaluation == "segm":
                return "malformed_segmentation", "has no 'segmentation', which mask AP scores; add it"
            cleaned, extent, problem = check_segmentation(ann.get("segmentation"), rec.height, rec.width)
            if self.evaluation == "segm" and problem is not None and problem[0] != "degenerate_polygon":
                return problem[0], f"has a bad segmentation: {problem[1]}; fix it or delete the annotation"
            if problem is None or problem[0] == "degenerate_polygon":
                with contextlib.suppress(Exception):
                    rle = self.coco.annToRLE(ann)  # exactly what COCOeval calls
            if rle is None and self.evaluation == "segm":
                if cleaned is None:
                    return "degenerate_polygon", (
                        "has no polygon with at least 3 x,y points that pycocotools can read; fix the "
                        "segmentation or delete the annotation"
                    )
                dropped = len(ann["segmentation"]) - len(cleaned)
                ann["segmentation"] = cleaned
                rle = self.coco.annToRLE(ann)
                note(
                    "polygon_part_dropped", f"has {dropped} polygon part(s) pycocotools cannot read: dropped"
                )
            if self.evaluation == "segm" and not ann["iscrowd"] and cleaned is not None:
                # Mask AP would score such a mask (e.g. a polygon in 0-1 units) as written: near 0, silently.
                box = clipped_xyxy(bbox, rec.height, rec.width)
                if box[2] > box[0] and box[3] > box[1]:  # else: a box problem, noted by the caller
                    off = segmentation_off_its_box(cleaned, box, rec.height, rec.width, extent)
                    if off is not None:
                        return "segmentation_box_mismatch", off
        if not area_ok:
            given = ann.get("area")
            area = None
            with contextlib.suppress(Exception):  # an RLE string pycocotools cannot decode
                area = float(mask_utils.area(rle)) if rle is not None else None
            source = "segmentation" if area is not None else "box"
            ann["area"] = area if area is not None else float(bbox[2] * bbox[3])
            note("area_missing", f"has area {given!r}: set to its {source}'s, {ann['area']:g}")
        return None

    def _prepare_ground_truth(self, dropped: list[dict[str, Any]]) -> None:
        """Make ``.coco`` the ground truth COCOeval scores against: without the annotations skipped as bad,
        and with ids from 1 where the file starts them at 0 (COCOeval stores a match as the matched id, so
        a match with annotation 0 would count as a miss: labelme's exports start at 0)."""
        annotations = self.coco.dataset["annotations"]
        if dropped:
            bad = {id(ann) for ann in dropped}
            annotations = self.coco.dataset["annotations"] = [a for a in annotations if id(a) not in bad]
        renumber = any(ann["id"] == 0 for ann in annotations)
        if renumber:
            logger.info(
                "%s: annotation ids renumbered from 1 for evaluation (0 is one)", self.annotation_file
            )
            for number, ann in enumerate(annotations, start=1):
                ann["id"] = number
        if dropped or renumber:
            with contextlib.redirect_stdout(io.StringIO()):
                self.coco.createIndex()

    def note_untrained_classes(self, trained_category_ids: set[int], training_file: str | Path) -> None:
        """Note each class this split annotates (crowd regions aside) that no training annotation has.

        A note, not an error: the split is sound and scored as written, and there is no record to drop; but
        the model cannot learn such a class, so its AP is 0 and lowers the mean, which is better heard
        before training than read in the results.

        Args:
            trained_category_ids: the category ids of the training file's non-crowd annotations.
            training_file: the training annotation file, for the message.
        """
        annotations = self.coco.dataset["annotations"]
        counts = Counter(ann["category_id"] for ann in annotations if not ann.get("iscrowd"))
        names = dict(zip(self.category_ids, self.class_names, strict=True))
        for category_id in sorted(counts.keys() - trained_category_ids):
            if category_id not in names:
                continue  # not a training category: an error of its own (unknown_category)
            record = f"category id {category_id}"
            self._note(
                "class_not_in_training",
                f"{self.annotation_file}: {record} ({names[category_id]!r}) has {counts[category_id]} "
                f"annotation(s) here but none in the training file {training_file}: the model cannot "
                "learn it, so its AP is 0 and lowers the mean AP; annotate it in the training data, or leave "
                "it out of this split",
                file=self.annotation_file,
                record=record,
            )
