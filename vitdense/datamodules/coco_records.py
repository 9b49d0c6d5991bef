"""Building a COCO split's records: each image and annotation record checked under the bad-data policy."""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

from vitdense.datamodules.bad_data import MIN_IMAGE_SIDE
from vitdense.datamodules.bad_data import SKIP_HINT as _SKIP_HINT
from vitdense.datamodules.coco_checks import (
    ImageRecord,
    InstanceRecord,
    check_segmentation,
    clipped_xyxy,
    far_box,
    is_int,
    is_size,
    iscrowd_problem,
    leaves_folder,
    malformed_box,
    segmentation_off_its_box,
)
from vitdense.datamodules.coco_file import INDEX_KEYS
from vitdense.datamodules.coco_ground_truth import CocoGroundTruth
from vitdense.datamodules.images import pixel_limit

__all__ = ["CocoRecordChecks"]

logger = logging.getLogger(__name__)


class CocoRecordChecks(CocoGroundTruth):
    """The image and annotation records of a COCO file that a :class:`~vitdense.datamodules.coco_dataset.
    CocoDetection` keeps, each bad one reported under its policy (see that class for the list).

    Attributes read (set by the dataset): ``images_root``, ``allow_outside_images``, ``masks``,
    ``keep_empty_images`` and ``max_objects_per_image``, besides those of :class:`CocoGroundTruth`.
    """

    images_root: Path
    allow_outside_images: bool
    masks: bool
    keep_empty_images: bool
    max_objects_per_image: int

    def _bad_record(self, kind: str, record: str, problem: str, about: str = "") -> None:
        """A bad record of the annotation file: ``problem`` says what is wrong and the fix."""
        message = f"{self.annotation_file}: {record}{about} {problem}, {_SKIP_HINT}"
        self._bad(kind, message, file=self.annotation_file, record=record)

    def _image_records(self) -> dict[int, ImageRecord]:
        for section, position, raw in getattr(self.coco, "malformed", ()):
            name = "image" if section == "images" else "annotation"
            rid = raw.get("id") if isinstance(raw, dict) else None
            record = f"{name} id {rid!r}" if rid is not None else f"{section}[{position}]"
            keys = INDEX_KEYS[section]
            if isinstance(raw, dict):
                wrong = [
                    f"'{k}': {raw[k]!r} ({type(raw[k]).__name__})" if k in raw else f"no '{k}'"
                    for k in keys
                    if not is_int(raw.get(k))
                ]
                problem = f"has {', '.join(wrong)}"
            else:
                problem = f"is {str(raw)[:80]!r}, not a record"
            quoted = [f"'{k}'" for k in keys]
            needs = " and ".join([", ".join(quoted[:-1]), quoted[-1]] if len(quoted) > 1 else quoted)
            kind = "malformed_image_record" if name == "image" else "malformed_annotation"
            self._bad_record(kind, record, f"{problem}; needs integer {needs}; fix the record")
        images = self.coco.dataset["images"]
        counts = Counter(img["id"] for img in images)
        records: dict[int, ImageRecord] = {}
        for img in images:
            for side in ("height", "width"):  # some tools write 375.0; pycocotools needs ints
                if isinstance(img.get(side), float) and img[side].is_integer():
                    img[side] = int(img[side])
            iid, name, h, w = img["id"], img.get("file_name"), img.get("height"), img.get("width")
            record = f"image id {iid}"
            if counts[iid] > 1:
                names = ", ".join(
                    sorted(str(other.get("file_name")) for other in images if other["id"] == iid)
                )
                problem = (
                    f"is the id of {counts[iid]} image records ({names}), so their annotations are ambiguous"
                )
                self._bad_record("duplicate_image_id", record, f"{problem}; give every image a unique id")
                continue
            if not (isinstance(name, str) and is_size(h) and is_size(w)):
                problem = f"{str(img)[:200]} needs a 'file_name' and positive integer 'height'/'width'"
                self._bad_record("malformed_image_record", record, f"{problem}; fix the record")
                continue
            path = os.path.join(self.images_root, name)
            if not self.allow_outside_images and leaves_folder(name):
                self._bad(
                    "image_outside_folder",
                    f"{path} ({record}, listed in {self.annotation_file}) lies outside the images folder "
                    f"{self.images_root}: its file_name {name!r} is absolute or climbs out with '..'; give "
                    "it relative to the folder, or pass allow_outside_images=true if the images live there, "
                    f"{_SKIP_HINT}",
                    file=path,
                    record=record,
                )
                continue
            if not os.path.isfile(path):
                windows = " (write its file_name with '/', not Windows' '\\')" if "\\" in name else ""
                self._bad(
                    "missing_image",
                    f"{path} ({record}, listed in {self.annotation_file}) does not exist{windows}; check the "
                    f"images folder argument, restore the file or remove the image record, {_SKIP_HINT}",
                    file=path,
                    record=record,
                )
                continue
            if min(h, w) < MIN_IMAGE_SIDE:
                self._bad(
                    "image_too_small",
                    f"{path} ({record}) is {h}x{w} (h x w), smaller than one {MIN_IMAGE_SIDE} px patch; "
                    f"remove the image record, {_SKIP_HINT}",
                    file=path,
                    record=record,
                )
                continue
            limit = pixel_limit()
            if limit is not None and h * w > limit:
                self._bad(
                    "image_too_large",
                    f"{path} ({record}) is {h}x{w} (h x w) per {self.annotation_file}: {h * w} pixels, more "
                    f"than the {limit} Pillow decodes (its guard against decompression bombs: twice "
                    "PIL.Image.MAX_IMAGE_PIXELS); fix the record's height and width, or split the image into "
                    f"tiles, {_SKIP_HINT}",
                    file=path,
                    record=record,
                )
                continue
            records[iid] = ImageRecord(iid, name, path, h, w)
        return self._without_shared_files(records)

    def _without_shared_files(self, records: dict[int, ImageRecord]) -> dict[int, ImageRecord]:
        """``records`` less those whose file another record names too (all of them: each would be trained on
        and scored as an image of its own, and which one's annotations are right is unknown)."""
        by_file: dict[str, list[ImageRecord]] = {}
        for rec in records.values():
            by_file.setdefault(os.path.normpath(rec.path), []).append(rec)
        for shared in (group for group in by_file.values() if len(group) > 1):
            for rec in shared:
                others = ", ".join(
                    f"image id {other.image_id} ({other.file_name!r})" for other in shared if other is not rec
                )
                self._bad(
                    "duplicate_file",
                    f"{rec.path} (image id {rec.image_id}, listed in {self.annotation_file}) is also the "
                    f"file of {others}: one image would be trained on and scored as {len(shared)}; keep "
                    f"one record and give it all their annotations, {_SKIP_HINT}",
                    file=rec.path,
                    record=f"image id {rec.image_id}",
                )
                del records[rec.image_id]
        return records

    def _instance(
        self, ann: dict[str, Any], rec: ImageRecord, label: int
    ) -> InstanceRecord | tuple[str, str]:
        """The checked instance of a non-crowd annotation, or ``(kind, what is wrong and the fix)``."""
        bbox = ann.get("bbox")
        if (problem := malformed_box(bbox)) is not None:
            return problem
        x, y, bw, bh = bbox
        if bw <= 0 or bh <= 0:
            return "degenerate_box", (
                f"has a zero-area or negative box {bbox} (COCO xywh); fix its width/height or delete "
                "the annotation"
            )
        if (problem := far_box(bbox, rec.height, rec.width)) is not None:
            return problem
        # Clipped to the image, as detectron2 does (COCO itself has boxes ~1 px past the border, from
        # rounding; annotation tools let boxes be dragged past it): dropping the object would teach it as
        # background. Only a box with nothing inside the image is bad.
        x1, y1, x2, y2 = clipped_xyxy(bbox, rec.height, rec.width)
        if x2 - x1 <= 0 or y2 - y1 <= 0:
            return "box_outside_image", (
                f"has box {bbox} (xywh) wholly outside the {rec.width}x{rec.height} (w x h) image; fix the "
                "box or the image record's width/height"
            )
        if x < -1 or y < -1 or x + bw > rec.width + 1 or y + bh > rec.height + 1:
            record = f"annotation id {ann['id']}"
            self._note(
                "box_clipped",
                f"{self.annotation_file}: {record} (image id {rec.image_id}) has box {bbox} (xywh) past the "
                f"{rec.width}x{rec.height} (w x h) image by over 1 px: "
                + ("COCOeval scores it as written" if self.evaluation is not None else "clipped to it"),
                file=self.annotation_file,
                record=record,
            )
        seg = None
        if self.masks:
            seg, extent, problem = check_segmentation(ann.get("segmentation"), rec.height, rec.width)
            if problem is not None:
                fix = "give polygons [[x1, y1, x2, y2, x3, y3, ...]] or RLE {'size': [h, w], 'counts': ...}"
                if problem[0] == "coordinates_far_outside":
                    fix = "fix it or delete the annotation"
                return problem[0], f"has a bad segmentation: {problem[1]}; {fix}"
            # Training boxes come from the masks: a segmentation elsewhere than its box would silently move
            # or erase the object (polygons exported in 0-1 units are the usual cause).
            off = segmentation_off_its_box(seg, (x1, y1, x2, y2), rec.height, rec.width, extent)
            if off is not None:
                return "segmentation_box_mismatch", off
        return InstanceRecord(ann["id"], (x1, y1, x2, y2), label, seg)

    def _build_records(self) -> list[ImageRecord]:
        records = self._image_records()
        image_ids = {img["id"] for img in self.coco.dataset["images"]}
        label_of = {cid: i + 1 for i, cid in enumerate(self.category_ids)}
        known = f"{self.category_ids[:20]}{'...' if len(self.category_ids) > 20 else ''}"
        had_instances: set[int] = set()
        crowded: set[int] = set()
        seen: set[int] = set()
        dropped: list[dict[str, Any]] = []  # bad annotations, which evaluation must not score either

        def reject(ann: dict[str, Any], kind: str, problem: str) -> None:
            self._bad_record(kind, f"annotation id {ann['id']}", problem, f" (image id {ann['image_id']})")
            dropped.append(ann)

        for ann in self.coco.dataset["annotations"]:
            aid, iid, cid = ann["id"], ann["image_id"], ann["category_id"]
            if aid in seen:
                problem = "repeats the id of an earlier annotation; give every annotation a unique id"
                reject(ann, "duplicate_annotation_id", f"{problem} (the first one is kept)")
                continue
            seen.add(aid)
            if iid not in image_ids:
                reject(
                    ann,
                    "unknown_image",
                    "refers to an image id not in 'images'; add the image record or delete the annotation",
                )
                continue
            if cid not in label_of:
                problem = f"has category_id {cid}, not a training category {known}"
                reject(
                    ann, "unknown_category", f"{problem}; fix the id or add the category to the training file"
                )
                continue
            if iid not in records:
                continue  # a bad image, already reported
            if self.evaluation is None and (problem := iscrowd_problem(ann)) is not None:
                had_instances.add(iid)  # an object or a crowd region: the image is no negative either way
                reject(ann, *problem)
                continue
            if not ann.get("iscrowd", 0):
                had_instances.add(iid)
            if self.evaluation is not None:
                problem = self._check_ground_truth(ann, records[iid])
                if problem is not None:
                    reject(ann, *problem)
                    continue
            if ann.get("iscrowd", 0):
                crowded.add(iid)
                continue  # crowd regions are only for evaluation
            result = self._instance(ann, records[iid], label_of[cid])
            if isinstance(result, tuple) and self.evaluation is not None:
                # COCOeval scores a zero-area or outside box as written: it stays in the ground truth.
                self._note(
                    result[0],
                    f"{self.annotation_file}: annotation id {aid} (image id {iid}) "
                    f"{result[1].split(';')[0]}: scored as written, no target",
                    file=self.annotation_file,
                    record=f"annotation id {aid}",
                )
                continue
            if isinstance(result, tuple):
                reject(ann, *result)
                continue
            seg = ann.get("segmentation")
            if self.masks and isinstance(seg, list) and len(result.segmentation) < len(seg):
                record = f"annotation id {aid}"
                self._note(
                    "polygon_part_dropped",
                    f"{self.annotation_file}: {record} (image id {iid}): "
                    f"{len(seg) - len(result.segmentation)} of its "
                    f"{len(seg)} polygon parts have fewer than 3 points and were dropped",
                    file=self.annotation_file,
                    record=record,
                )
            records[iid].instances.append(result)
        if self.evaluation is not None:
            self._prepare_ground_truth(dropped)
            return list(records.values())  # evaluation covers every image of the file
        kept = []
        for rec in records.values():
            if len(rec.instances) > self.max_objects_per_image:
                self._too_many_objects(rec)
            elif rec.instances:
                kept.append(rec)
            elif rec.image_id in had_instances:
                # All its objects were dropped as bad: it is not a true negative, so never train on it as one.
                logger.debug("%s: image id %d lost all its annotations", self.annotation_file, rec.image_id)
            elif rec.image_id in crowded:
                # Only crowd regions, full of objects: as a negative it would teach them as background.
                logger.debug("%s: image id %d has only crowd regions", self.annotation_file, rec.image_id)
            elif self.keep_empty_images:
                kept.append(rec)
        return kept

    def _too_many_objects(self, rec: ImageRecord) -> None:
        """Report a training image with more objects than ``max_objects_per_image`` (the caller drops it)."""
        cost = "a mask of the whole canvas and " if self.masks else ""
        self._bad_record(
            "too_many_objects",
            f"image id {rec.image_id}",
            f"has {len(rec.instances)} objects, more than max_objects_per_image="
            f"{self.max_objects_per_image}: each costs a training sample {cost}a row of the RPN's anchor "
            "matching, which would exhaust the memory; split the image into tiles with fewer objects each, "
            "or raise max_objects_per_image",
            f" ({rec.path})",
        )
