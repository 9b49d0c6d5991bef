"""COCO-format detection / instance segmentation data: datasets, bad-data policy and the DataModule.

Labels are contiguous ``1..K`` (0 is background, the torchvision R-CNN convention); label ``L`` is
category id ``category_ids[L - 1]`` (ids sorted ascending; they may include 0 and have gaps).
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from itertools import chain
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from vitdense.datamodules.bad_data import (
    DECODE_ERRORS,
    MIN_IMAGE_SIDE,
    BadDataError,
    CheckedDataset,
    Finding,
    OnBadData,
    Policy,
)
from vitdense.datamodules.bad_data import SKIP_HINT as _SKIP_HINT
from vitdense.datamodules.collate import collate_detection
from vitdense.datamodules.images import image_conversions, pixel_limit, read_image
from vitdense.datamodules.instance_masks import InstanceMasks
from vitdense.datamodules.loading import SplitDataModule
from vitdense.datamodules.packed import PackedRecords
from vitdense.datamodules.predict_images import PredictImages
from vitdense.datamodules.transforms import EvalTransform, TrainTransform

__all__ = [
    "CocoDataModule",
    "CocoDetection",
    "CocoFile",
    "load_coco",
]

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------------
# Annotations
# ----------------------------------------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class CocoFile(COCO):
    """A parsed COCO file: pycocotools' index over the records it can index, and those it cannot.

    Attributes:
        path: the annotation file.
        malformed: ``(section, position, record)`` of the ``images`` / ``annotations`` records left out of
            ``dataset`` and the index: not an object, or an ``id`` (``image_id``, ``category_id``) that is
            not an integer. :class:`CocoDetection` reports them.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.malformed: list[tuple[str, int, Any]] = []


_INDEX_KEYS = {"images": ("id",), "annotations": ("id", "image_id", "category_id")}


def _object_noting_repeated_keys(
    repeated: list[tuple[str, dict[str, Any]]], pairs: list[tuple[str, Any]]
) -> dict[str, Any]:
    """A JSON object as a dict; a key given twice is noted in ``repeated`` (``json`` keeps the last value
    silently: two ``"annotations"`` lists of a hand-merged file would lose the first)."""
    obj = dict(pairs)
    if len(obj) < len(pairs):
        key = next(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)
        repeated.append((key, obj))
    return obj


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while parsing builds millions of objects, none of them
    garbage: each collection it triggers walks all of them, a third of the time of parsing a COCO
    train2017-sized file. Its previous state is restored after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def load_coco(annotation_file: str | Path) -> CocoFile:
    """Parse a COCO annotation file (quietly: pycocotools prints progress to stdout).

    Image and annotation records that pycocotools cannot index are set aside in ``malformed`` rather than
    crashing the index; the dataset reports them as bad records.

    Raises:
        FileNotFoundError: the file does not exist (or is a folder).
        BadDataError: the file is not valid JSON, has an object with a key given twice, lacks ``images`` /
            ``categories``, or has a category without an integer ``id``.
    """
    path = Path(annotation_file)
    if path.is_dir():
        raise FileNotFoundError(f"{path} is a folder, not an annotation file; give the COCO JSON file's path")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: annotation file not found; check the *_annotations argument")

    def fail(kind: str, message: str) -> BadDataError:
        return BadDataError(message, Finding(kind, message, str(path), "the whole file"))

    repeated: list[tuple[str, dict[str, Any]]] = []
    try:
        with path.open("rb") as f, _collector_paused():
            data = json.load(f, object_pairs_hook=partial(_object_noting_repeated_keys, repeated))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nested too deep
        raise fail(
            "invalid_json", f"{path}: not valid JSON ({exc}); re-export or re-download the file"
        ) from exc
    if repeated:
        key, obj = repeated[0]
        more = f" (and {len(repeated) - 1} more such objects)" if len(repeated) > 1 else ""
        message = (
            f"{path}: an object has the key {key!r} more than once ({str(obj)[:120]}){more}; JSON readers "
            "keep only the last value, so the others would be lost without a word: merge or rename the keys"
        )
        raise fail("duplicate_key", message)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        message = f"{path}: no 'images' list; a COCO file has 'images', 'annotations', 'categories'"
        raise fail("malformed_json", message)
    if not isinstance(data.get("categories"), list) or not data["categories"]:
        raise fail("malformed_json", f"{path}: no 'categories' list; add the category records (id, name)")
    for cat in data["categories"]:
        if not isinstance(cat, dict) or not _is_int(cat.get("id")):
            raise fail("malformed_json", f"{path}: category {cat!r} has no integer 'id'; fix the record")
    data.setdefault("annotations", [])
    if not isinstance(data["annotations"], list):
        raise fail("malformed_json", f"{path}: 'annotations' is not a list; fix the file")
    coco = CocoFile(path)
    for section, keys in _INDEX_KEYS.items():
        kept = []
        for position, record in enumerate(data[section]):
            if isinstance(record, dict) and all(_is_int(record.get(k)) for k in keys):
                kept.append(record)
            else:
                coco.malformed.append((section, position, record))
        data[section] = kept
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()), _collector_paused():
        coco.createIndex()
    return coco


def _check_pixel_units(coco: COCO, annotation_file: str | Path) -> None:
    """Raise when every box of the file lies within ``[0, 1] x [0, 1]``: its coordinates are normalised
    (as YOLO-style exporters write them), not pixels. Box and segmentation then agree with each other, so no
    single record looks wrong, but every object would be a dot in the top-left pixel.

    Raises:
        BadDataError: under every policy: there is no good record to keep.
    """
    boxes, far = 0, 0.0
    for ann in coco.dataset["annotations"]:
        bbox = ann.get("bbox") if isinstance(ann, dict) else None
        if _malformed_box(bbox) is None and bbox[2] > 0 and bbox[3] > 0:  # a degenerate box says nothing
            boxes += 1
            far = max(far, bbox[0] + bbox[2], bbox[1] + bbox[3])
    if boxes and far <= 1.0:
        message = (
            f"{annotation_file}: all {boxes} boxes lie within [0, 1] x [0, 1]: the file holds normalised "
            "(0-1) coordinates, COCO's are pixels; convert every box and segmentation (x * image width, "
            "y * image height)"
        )
        raise BadDataError(
            message, Finding("normalised_coordinates", message, str(annotation_file), "annotations")
        )


# A correct xywh box fits as corners too when it starts nearer the top-left than its size (a large object,
# a crowd region), and annotation tools overshoot the border by a pixel or two: neither one such box nor one
# odd box in a corner file may decide for the whole file.
_CORNER_MIN_BOXES, _CORNER_MIN_IMAGES, _CORNER_SHARE = 20, 5, 0.95


def _check_box_format(coco: COCO, annotation_file: str | Path) -> None:
    """Raise when the boxes are corners ``[x1, y1, x2, y2]``, not COCO's ``[x, y, width, height]``: at
    least 20 boxes over at least 5 images, 95% of them fit their images as corners (-1 <= x1 < x2 <= width
    + 1, likewise y) and at least half of the boxes, read as COCO's, run past the image by over 2 px and a
    tenth of its side. Each such box would only be clipped with a note, training and scoring wrong boxes;
    on weaker evidence the file is read as COCO's and each box past the border is clipped with a note.

    Raises:
        BadDataError: under every policy: no record of the file can be trusted.
    """
    sizes = {
        img["id"]: (img.get("height"), img.get("width"))
        for img in coco.dataset["images"]
        if _is_number(img.get("height")) and _is_number(img.get("width"))
    }
    boxes, corners, past, images, example = 0, 0, 0, set(), None
    for ann in coco.dataset["annotations"]:
        bbox, size = ann.get("bbox"), sizes.get(ann.get("image_id"))
        if size is None or _malformed_box(bbox) is not None:
            continue
        (x, y, a, b), (h, w) = bbox, size
        boxes += 1
        images.add(ann["image_id"])
        if not (-1 <= x < a <= w + 1 and -1 <= y < b <= h + 1):
            continue
        corners += 1
        if x + a > w + max(2, w / 10) or y + b > h + max(2, h / 10):
            past += 1
            example = example or f"annotation id {ann['id']}: {bbox} on a {w}x{h} (w x h) image"
    enough = boxes >= _CORNER_MIN_BOXES and len(images) >= _CORNER_MIN_IMAGES
    if enough and corners >= _CORNER_SHARE * boxes and 2 * past >= boxes:
        message = (
            f"{annotation_file}: {past} of its {boxes} boxes run past their images read as COCO's [x, y, "
            f"width, height] (e.g. {example}), while {corners} fit their images as corners [x1, y1, x2, y2]: "
            "the file holds corners; convert every bbox to [x1, y1, x2 - x1, y2 - y1]"
        )
        raise BadDataError(message, Finding("corner_boxes", message, str(annotation_file), "annotations"))


def _check_has_segmentations(coco: COCO, annotation_file: str | Path) -> None:
    """Raise when masks are wanted but no annotation of the file has a segmentation: a boxes-only file
    would otherwise give one error per annotation.

    Raises:
        BadDataError: under every policy: there is no good record to keep.
    """
    annotations = coco.dataset["annotations"]
    if annotations and not any(isinstance(ann, dict) and ann.get("segmentation") for ann in annotations):
        message = (
            f"{annotation_file}: none of its {len(annotations)} annotations has a 'segmentation', so it "
            "holds boxes only and Mask R-CNN has no masks to learn or score: for boxes only use the Faster "
            "R-CNN recipe (recipes/coco_faster_rcnn.yaml: detector vitdense.heads.FasterRCNN, data masks: "
            "false), or add the segmentations (polygons or RLE) to the file"
        )
        raise BadDataError(message, Finding("no_segmentations", message, str(annotation_file), "annotations"))


_BACKGROUND_NAMES = {"background", "_background_", "__background__", "bg"}


def categories_of(
    coco: COCO, annotation_file: str | Path, keep_background_category: bool = False, warn: bool = True
) -> tuple[list[int], list[str]]:
    """Category ids sorted ascending and their names; label ``L`` is ``ids[L - 1]``.

    A category named as background (``_background_``, as labelme's converter writes, ``background``,
    ``__background__``, ``bg``) that no annotation uses is left out, with a warning, unless
    ``keep_background_category``: label 0 is the R-CNN background already, and an empty foreground class
    would only cost the classifier a logit. ``warn=False``: without the warning (the caller's mapping
    governs; the DataModule warned once already).
    """
    cats = {}
    for cat in coco.dataset["categories"]:
        if not isinstance(cat, dict) or not _is_int(cat.get("id")):
            raise BadDataError(f"{annotation_file}: category {cat!r} has no integer 'id'; fix the record")
        if cat["id"] in cats:
            message = f"{annotation_file}: category id {cat['id']} appears twice; make ids unique"
            raise BadDataError(
                message, Finding("duplicate_category_id", message, str(annotation_file), "categories")
            )
        cats[cat["id"]] = str(cat.get("name", cat["id"]))
    used = {ann.get("category_id") for ann in coco.dataset.get("annotations", [])}
    for category_id, name in list(cats.items()):
        background = name.strip().lower() in _BACKGROUND_NAMES
        if background and not keep_background_category and category_id not in used and len(cats) > 1:
            log = logger.warning if warn else logger.debug
            log(
                "%s: category id %s %r has no annotations and names the background, which label 0 already "
                "is: left out of the classes (keep_background_category=true keeps it, as for checkpoints "
                "trained with it)",
                annotation_file,
                category_id,
                name,
            )
            del cats[category_id]
    ids = sorted(cats)
    names = [cats[i] for i in ids]
    for name, count in Counter(names).items():
        if count > 1 and warn:
            same = [i for i in ids if cats[i] == name]
            logger.warning(
                "%s: category ids %s are all named %r: they are separate classes, whose predictions and "
                "per-class AP carry the same name; merge them into one category or rename them",
                annotation_file,
                same,
                name,
            )
    return ids, names


@dataclass
class _Instance:
    ann_id: int
    box: tuple[float, float, float, float]  # xyxy, clipped to the image
    label: int
    segmentation: list[list[float]] | dict[str, Any] | None


@dataclass
class _ImageRecord:
    image_id: int
    file_name: str
    path: str
    height: int
    width: int
    instances: list[_Instance] = field(default_factory=list)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# A COCO train2017-sized file holds ~60M polygon coordinates: a Python call per number cost ~40 s of setup.
# Its lists are short (~70 numbers per annotation), where numpy's fixed cost per call (converting the list
# included) outweighs its speed, so the helpers below run the builtins' C loops over each list (type,
# isfinite, min, max), with the exact answers of the per-number checks: only lists of plain ints and floats
# take the fast path.
_PLAIN_NUMBERS = {int, float}


def _are_numbers(values: list[Any]) -> bool:
    """``all(_is_number(v) for v in values)``, without a Python call per value."""
    if set(map(type, values)) <= _PLAIN_NUMBERS:
        return all(map(math.isfinite, values))
    return all(_is_number(v) for v in values)  # bools, other types, subclasses of int or float


def _are_counts(values: list[Any]) -> bool:
    """``all(_is_int(v) and v >= 0 for v in values)``, without a Python call per value."""
    if set(map(type, values)) <= {int}:
        return not values or min(values) >= 0
    return all(_is_int(v) and v >= 0 for v in values)


def _polygon_extent(seg: list[list[float]], empty: float | None = None) -> tuple[float, float, float, float]:
    """``(min x, min y, max x, max y)`` over the vertices of polygon parts ``[x1, y1, x2, y2, ...]``.

    The values themselves (``int`` or ``float``; of equal ones the first), as ``min`` and ``max`` over all of
    them give. ``empty``: the value of a coordinate that no part has (without it, such a polygon raises
    ValueError)."""
    if len(seg) == 1:  # most objects are one polygon
        xs, ys = seg[0][0::2], seg[0][1::2]
    else:
        xs = list(chain.from_iterable(part[0::2] for part in seg))
        ys = list(chain.from_iterable(part[1::2] for part in seg))
    if empty is not None:
        xs, ys = xs or [empty], ys or [empty]
    return min(xs), min(ys), max(xs), max(ys)


def _is_size(v: Any) -> bool:
    return _is_int(v) and v > 0


def _leaves_folder(file_name: str) -> bool:
    """Whether ``file_name`` names a file outside the folder it is relative to: an absolute path, or one that
    climbs out with ``..``. Read from the name alone: a link inside the folder may point anywhere."""
    norm = os.path.normpath(file_name)
    return os.path.isabs(norm) or norm == os.pardir or norm.startswith(os.pardir + os.sep)


def _clipped_xyxy(bbox: list[float], h: int, w: int) -> tuple[float, float, float, float]:
    """A COCO ``[x, y, w, h]`` box as ``(x1, y1, x2, y2)`` clipped to an ``h x w`` image."""
    x, y, bw, bh = bbox
    return (
        min(max(x, 0.0), w),
        min(max(y, 0.0), h),
        min(max(x + bw, 0.0), w),
        min(max(y + bh, 0.0), h),
    )


def _malformed_box(bbox: Any) -> tuple[str, str] | None:
    """``(kind, what is wrong and the fix)`` for a ``bbox`` that is not four numbers, else None."""
    if isinstance(bbox, list) and len(bbox) == 4 and _are_numbers(bbox):
        return None
    return "malformed_box", f"has bbox {bbox!r}, expected [x, y, width, height] numbers; fix the box"


# A vertex or box corner dragged past the border lies a few pixels, at most some hundreds, outside its image;
# one further out than the image's longer side (or than 1000 px, which spares the small images of annotations
# made on a larger copy) marks no object of this image: the coordinates are corrupt, another image's or in
# other units. The bound also caps what pycocotools' rasteriser costs: it walks every pixel of a polygon's
# outline, upsampled 5x, in int32, so its memory grows with how far apart the vertices lie (one vertex at 1e9
# asks ~20 GB and kills the process under any bad-data policy; beyond 4.3e8 the int32 overflows). Within the
# bound an edge is at most ~3 image sides long: ~40 bytes per pixel of it.
_MIN_OUTSIDE_REACH = 1000.0


def _far_outside(x1: float, y1: float, x2: float, y2: float, h: int, w: int) -> str | None:
    """What is wrong when the extent ``[x1, x2] x [y1, y2]`` reaches further outside an ``h x w`` image than a
    point dragged past its border can (see ``_MIN_OUTSIDE_REACH``), else None."""
    reach = max(h, w, _MIN_OUTSIDE_REACH)
    past = max(-x1, -y1, x2 - w, y2 - h)
    if past <= reach:
        return None
    return (
        f"reaches {past:.6g} px outside the {w}x{h} (w x h) image, further than a point dragged past its "
        f"border can ({reach:g} px: the image's longer side, at least 1000): the coordinates are corrupt, "
        "another image's or in other units"
    )


def _far_box(bbox: list[float], h: int, w: int) -> tuple[str, str] | None:
    """``(kind, what is wrong and the fix)`` for a box (COCO xywh) reaching far outside an ``h x w`` image."""
    x, y, bw, bh = bbox
    far = _far_outside(x, y, x + bw, y + bh, h, w)
    if far is None:
        return None
    return "coordinates_far_outside", f"has box {bbox} (xywh), which {far}; fix it or delete the annotation"


def _iscrowd_problem(ann: dict[str, Any]) -> tuple[str, str] | None:
    """``(kind, what is wrong and the fix)`` unless ``iscrowd`` is missing or the integer 0 or 1: a ``"0"``, a
    2 or a ``null`` would be read by truthiness, turning an object into a crowd region or back."""
    value = ann.get("iscrowd", 0)
    if _is_int(value) and value in (0, 1):
        return None
    return "malformed_annotation", f"has iscrowd {value!r}, expected 0 or 1; fix the record"


def _check_segmentation(seg: Any, h: int, w: int) -> tuple[Any, tuple[str, str] | None]:
    """Return ``(cleaned segmentation, None)`` or ``(None, (kind, what is wrong))``.

    Polygon parts with fewer than 3 points or an odd number of coordinates are dropped (detectron2 does
    the same; a 4-number part would otherwise be read by pycocotools as a box); an annotation left without
    a polygon is ``degenerate_polygon``. A polygon reaching far outside the image (any part of it, so that
    nothing pycocotools rasterises does) is ``coordinates_far_outside``.
    """
    if isinstance(seg, list):
        parts = []
        for part in seg:
            if not isinstance(part, list) or not _are_numbers(part):
                return None, ("malformed_segmentation", "a polygon part is not a list of numbers")
        if (far := _far_outside(*_polygon_extent(seg, empty=0.0), h, w)) is not None:
            return None, ("coordinates_far_outside", f"a polygon {far}")
        for part in seg:
            if len(part) >= 6 and len(part) % 2 == 0:
                parts.append(part)
        if not parts:
            return None, ("degenerate_polygon", "no polygon with at least 3 x,y points")
        return parts, None
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) for v in size)):
            return None, ("malformed_segmentation", f"RLE 'size' is {size!r}, expected [height, width]")
        if list(size) != [h, w]:
            return None, ("rle_size_mismatch", f"RLE size {size} differs from the image size [{h}, {w}]")
        if isinstance(counts, list):
            if not _are_counts(counts) or sum(counts) != h * w:
                problem = "uncompressed RLE counts must be non-negative ints summing to height*width"
                return None, ("malformed_segmentation", problem)
        elif not isinstance(counts, (str, bytes)):
            problem = f"RLE 'counts' is {type(counts).__name__}, expected a string or a list of ints"
            return None, ("malformed_segmentation", problem)
        else:
            try:  # a compressed string that is not an RLE of this size decodes to nonsense, not an error
                area = int(mask_utils.area({"size": size, "counts": counts}))
            except Exception:  # noqa: BLE001 (pycocotools raises several kinds)
                area = -1
            if not 0 <= area <= h * w:
                return None, ("malformed_segmentation", f"RLE 'counts' does not decode to a {h}x{w} mask")
        return seg, None
    problem = f"segmentation is {type(seg).__name__}, expected polygons (list) or RLE (dict)"
    return None, ("malformed_segmentation", problem)


def _segmentation_off_its_box(
    seg: list[list[float]] | dict[str, Any], box: tuple[float, ...], h: int, w: int
) -> str | None:
    """What is wrong when a checked segmentation lies elsewhere than its box (xyxy, clipped to the image).

    Its extent (polygon vertices, or RLE pixels; an empty RLE is not judged), clipped like the box, must touch
    the box grown by 1 px and, for a box of 4 px or more each way (a thinner one is within rasterising error
    of its mask), overlap it with an IoU of at least 0.1.
    """
    if isinstance(seg, list):
        x1, y1, x2, y2 = _polygon_extent(seg)
    else:
        rle = mask_utils.frPyObjects(seg, h, w) if isinstance(seg["counts"], list) else seg
        if not mask_utils.area(rle):
            return None
        x1, y1, bw, bh = (float(v) for v in mask_utils.toBbox(rle))
        x2, y2 = x1 + bw, y1 + bh
    x1, x2 = (min(max(v, 0.0), w) for v in (x1, x2))
    y1, y2 = (min(max(v, 0.0), h) for v in (y1, y2))
    touches = x2 >= box[0] - 1 and x1 <= box[2] + 1 and y2 >= box[1] - 1 and y1 <= box[3] + 1
    if touches and min(box[2] - box[0], box[3] - box[1]) < 4:
        return None
    # One pair per annotation: pycocotools' iou costs 14 us a call, 12 s over COCO train2017's 860k.
    inter = max(0.0, min(x2, box[2]) - max(x1, box[0])) * max(0.0, min(y2, box[3]) - max(y1, box[1]))
    union = (x2 - x1) * (y2 - y1) + (box[2] - box[0]) * (box[3] - box[1]) - inter
    iou = inter / union if union > 0 else 0.0
    if touches and iou >= 0.1:
        return None
    spans = [round(v, 1) for v in (x1, y1, x2, y2)]
    return (
        f"has a segmentation spanning {spans} but a box spanning {[round(v, 1) for v in box]} (x1, y1, x2, "
        f"y2, in the image), IoU {iou:.2f}: one of them is in other units (e.g. normalised to 0-1) or of "
        "another image; fix it"
    )


def decode_masks(instances: list[_Instance], h: int, w: int) -> InstanceMasks:
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


# ----------------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------------


class CocoDetection(CheckedDataset):
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
        _check_pixel_units(self.coco, self.annotation_file)
        _check_box_format(self.coco, self.annotation_file)
        if masks or evaluation == "segm":
            _check_has_segmentations(self.coco, self.annotation_file)
        file_ids, file_names = categories_of(self.coco, annotation_file, warn=category_ids is None)
        if category_ids is None:
            self.category_ids, self.class_names = file_ids, file_names
        else:
            names = dict(zip(file_ids, file_names))
            self.category_ids = list(category_ids)
            self.class_names = [names.get(i, str(i)) for i in self.category_ids]
        with _collector_paused():
            records = self._build_records()
        self._instance_counts = np.asarray([len(r.instances) for r in records], dtype=np.int64)
        # Packed: DataLoader workers then share the records instead of copying them (see PackedRecords).
        self._records = PackedRecords(records)
        self.image_ids = [r.image_id for r in records]  # not from the packed ones: each read unpickles
        self._log_skips()

    def _bad_record(self, kind: str, record: str, problem: str, about: str = "") -> None:
        """A bad record of the annotation file: ``problem`` says what is wrong and the fix."""
        message = f"{self.annotation_file}: {record}{about} {problem}, {_SKIP_HINT}"
        self._bad(kind, message, file=self.annotation_file, record=record)

    def _image_records(self) -> dict[int, _ImageRecord]:
        for section, position, raw in getattr(self.coco, "malformed", ()):
            name = "image" if section == "images" else "annotation"
            rid = raw.get("id") if isinstance(raw, dict) else None
            record = f"{name} id {rid!r}" if rid is not None else f"{section}[{position}]"
            keys = _INDEX_KEYS[section]
            if isinstance(raw, dict):
                wrong = [
                    f"'{k}': {raw[k]!r} ({type(raw[k]).__name__})" if k in raw else f"no '{k}'"
                    for k in keys
                    if not _is_int(raw.get(k))
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
        records: dict[int, _ImageRecord] = {}
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
            if not (isinstance(name, str) and _is_size(h) and _is_size(w)):
                problem = f"{str(img)[:200]} needs a 'file_name' and positive integer 'height'/'width'"
                self._bad_record("malformed_image_record", record, f"{problem}; fix the record")
                continue
            path = os.path.join(self.images_root, name)
            if not self.allow_outside_images and _leaves_folder(name):
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
            records[iid] = _ImageRecord(iid, name, path, h, w)
        return self._without_shared_files(records)

    def _without_shared_files(self, records: dict[int, _ImageRecord]) -> dict[int, _ImageRecord]:
        """``records`` less those whose file another record names too (all of them: each would be trained on
        and scored as an image of its own, and which one's annotations are right is unknown)."""
        by_file: dict[str, list[_ImageRecord]] = {}
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

    def _instance(self, ann: dict[str, Any], rec: _ImageRecord, label: int) -> _Instance | tuple[str, str]:
        """The checked instance of a non-crowd annotation, or ``(kind, what is wrong and the fix)``."""
        bbox = ann.get("bbox")
        if (problem := _malformed_box(bbox)) is not None:
            return problem
        x, y, bw, bh = bbox
        if bw <= 0 or bh <= 0:
            return "degenerate_box", (
                f"has a zero-area or negative box {bbox} (COCO xywh); fix its width/height or delete "
                "the annotation"
            )
        if (problem := _far_box(bbox, rec.height, rec.width)) is not None:
            return problem
        # Clipped to the image, as detectron2 does (COCO itself has boxes ~1 px past the border, from
        # rounding; annotation tools let boxes be dragged past it): dropping the object would teach it as
        # background. Only a box with nothing inside the image is bad.
        x1, y1, x2, y2 = _clipped_xyxy(bbox, rec.height, rec.width)
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
            seg, problem = _check_segmentation(ann.get("segmentation"), rec.height, rec.width)
            if problem is not None:
                fix = "give polygons [[x1, y1, x2, y2, x3, y3, ...]] or RLE {'size': [h, w], 'counts': ...}"
                if problem[0] == "coordinates_far_outside":
                    fix = "fix it or delete the annotation"
                return problem[0], f"has a bad segmentation: {problem[1]}; {fix}"
            # Training boxes come from the masks: a segmentation elsewhere than its box would silently move
            # or erase the object (polygons exported in 0-1 units are the usual cause).
            off = _segmentation_off_its_box(seg, (x1, y1, x2, y2), rec.height, rec.width)
            if off is not None:
                return "segmentation_box_mismatch", off
        return _Instance(ann["id"], (x1, y1, x2, y2), label, seg)

    def _check_ground_truth(self, ann: dict[str, Any], rec: _ImageRecord) -> tuple[str, str] | None:
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
        elif (problem := _iscrowd_problem(ann)) is not None:
            return problem
        bbox = ann.get("bbox")
        if (problem := _malformed_box(bbox)) is not None:
            return problem
        if (problem := _far_box(bbox, rec.height, rec.width)) is not None:
            return problem
        area_ok = _is_number(ann.get("area")) and ann["area"] >= 0
        rle = None
        if self.evaluation == "segm" or not area_ok:
            if "segmentation" not in ann and self.evaluation == "segm":
                return "malformed_segmentation", "has no 'segmentation', which mask AP scores; add it"
            cleaned, problem = _check_segmentation(ann.get("segmentation"), rec.height, rec.width)
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
                box = _clipped_xyxy(bbox, rec.height, rec.width)
                if box[2] > box[0] and box[3] > box[1]:  # else: a box problem, noted by the caller
                    off = _segmentation_off_its_box(cleaned, box, rec.height, rec.width)
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

    def _build_records(self) -> list[_ImageRecord]:
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
            if self.evaluation is None and (problem := _iscrowd_problem(ann)) is not None:
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

    def _too_many_objects(self, rec: _ImageRecord) -> None:
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
        self, index: int, data: tuple[np.ndarray, InstanceMasks | None]
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        rec = self._records[index]
        image, masks = data
        n = len(rec.instances)
        boxes = np.asarray([inst.box for inst in rec.instances], dtype=np.float32).reshape(n, 4)
        labels = np.asarray([inst.label for inst in rec.instances], dtype=np.int64)
        out = self.transform(image, boxes, labels, masks)
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


# ----------------------------------------------------------------------------------------------------
# DataModule
# ----------------------------------------------------------------------------------------------------


def _check_image_size(image_size: int, size_divisibility: int) -> None:
    if size_divisibility <= 0 or image_size <= 0:
        raise ValueError(f"image_size={image_size}, size_divisibility={size_divisibility}: both must be > 0")
    if image_size % size_divisibility:
        lower = image_size // size_divisibility * size_divisibility
        upper = lower + size_divisibility
        nearest = f"{lower} or {upper}" if lower else f"{upper}"
        raise ValueError(
            f"image_size={image_size} is not a multiple of size_divisibility={size_divisibility} "
            f"(4 x patch 14, so every pyramid level has an integer size); use {nearest}"
        )


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
        _check_image_size(image_size, size_divisibility)
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale; got {min_scale=}, {max_scale=}")
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1) or num_workers < 0:
            raise ValueError(
                f"batch_size={batch_size}, eval_batch_size={eval_batch_size} must be >= 1 and "
                f"num_workers={num_workers} >= 0"
            )
        if on_bad_data not in ("error", "skip"):
            raise ValueError(f"on_bad_data={on_bad_data!r}; use 'error' or 'skip'")
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
        self.predict_dataset: PredictImages | None = None

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
            EvalTransform(self.image_size),
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

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets ``stage`` needs (``fit``, ``validate``, ``test``, ``predict`` or None: all).

        The test split reuses the validation dataset when it has the same files.
        """
        self._setup_splits(stage)
        if stage in ("predict", None) and self.predict_dataset is None and self.predict_images is not None:
            self.predict_dataset = PredictImages(
                self.predict_images, EvalTransform(self.image_size), self.predict_apply_exif
            )
        if stage == "predict" and self.predict_images is None:
            raise ValueError("predict needs predict_images (an image file, a folder or a glob)")
