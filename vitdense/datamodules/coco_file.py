"""Parsing a COCO annotation file and the checks that judge the whole file (units, box format, categories).

Labels are contiguous ``1..K`` (0 is background, the torchvision R-CNN convention); label ``L`` is
category id ``category_ids[L - 1]`` (ids sorted ascending; they may include 0 and have gaps).
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import logging
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from pycocotools.coco import COCO

from vitdense.datamodules.bad_data import BadDataError, Finding
from vitdense.datamodules.coco_checks import is_int, is_number, malformed_box

__all__ = [
    "INDEX_KEYS",
    "CocoFile",
    "categories_of",
    "check_box_format",
    "check_has_segmentations",
    "check_pixel_units",
    "collector_paused",
    "load_coco",
]

logger = logging.getLogger(__name__)


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


INDEX_KEYS = {"images": ("id",), "annotations": ("id", "image_id", "category_id")}


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
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while parsing builds millions of objects, none of them
    garbage: each collection it triggers walks all of them, a third of the time of parsing a COCO
    train2017-sized file. Its previous state is restored after.

    What was built meanwhile then goes to the collector's oldest generation unexamined (``gc.freeze()`` and
    ``gc.unfreeze()``): left in the youngest, it would be walked three times over by the first collections
    after (youngest, middle, then a full one: setting up train2017's file spent 28 s in collections, 7 s
    with this, on a loaded machine). Where objects are frozen already (``gc.freeze()`` before a fork), they
    stay frozen and what was built stays young.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            if gc.get_freeze_count() == 0:
                gc.freeze()
                gc.unfreeze()
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
        with path.open("rb") as f, collector_paused():
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
        if not isinstance(cat, dict) or not is_int(cat.get("id")):
            raise fail("malformed_json", f"{path}: category {cat!r} has no integer 'id'; fix the record")
    data.setdefault("annotations", [])
    if not isinstance(data["annotations"], list):
        raise fail("malformed_json", f"{path}: 'annotations' is not a list; fix the file")
    coco = CocoFile(path)
    for section, keys in INDEX_KEYS.items():
        kept = []
        for position, record in enumerate(data[section]):
            if isinstance(record, dict) and all(is_int(record.get(k)) for k in keys):
                kept.append(record)
            else:
                coco.malformed.append((section, position, record))
        data[section] = kept
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()), collector_paused():
        coco.createIndex()
    return coco


def check_pixel_units(coco: COCO, annotation_file: str | Path) -> None:
    """Raise when every box of the file lies within ``[0, 1] x [0, 1]``: its coordinates are normalised
    (as YOLO-style exporters write them), not pixels. Box and segmentation then agree with each other, so no
    single record looks wrong, but every object would be a dot in the top-left pixel.

    Raises:
        BadDataError: under every policy: there is no good record to keep.
    """
    boxes, far = 0, 0.0
    for ann in coco.dataset["annotations"]:
        bbox = ann.get("bbox") if isinstance(ann, dict) else None
        if malformed_box(bbox) is None and bbox[2] > 0 and bbox[3] > 0:  # a degenerate box says nothing
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


def check_box_format(coco: COCO, annotation_file: str | Path) -> None:
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
        if is_number(img.get("height")) and is_number(img.get("width"))
    }
    boxes, corners, past, images, example = 0, 0, 0, set(), None
    for ann in coco.dataset["annotations"]:
        bbox, size = ann.get("bbox"), sizes.get(ann.get("image_id"))
        if size is None or malformed_box(bbox) is not None:
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


def check_has_segmentations(coco: COCO, annotation_file: str | Path) -> None:
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
        if not isinstance(cat, dict) or not is_int(cat.get("id")):
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
