"""Checks of one COCO record (an image, a box, a segmentation), each returning what is wrong and the fix.

Pure functions of the record and its image size; :class:`~vitdense.datamodules.coco_records.CocoRecordChecks`
applies them to a whole file under the bad-data policy.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

from pycocotools import mask as mask_utils

__all__ = [
    "Extent",
    "ImageRecord",
    "InstanceRecord",
    "check_segmentation",
    "clipped_xyxy",
    "far_box",
    "is_int",
    "is_number",
    "is_size",
    "iscrowd_problem",
    "leaves_folder",
    "malformed_box",
    "segmentation_off_its_box",
]


def is_int(v: Any) -> bool:
    """Whether ``v`` is a JSON integer (a bool is not)."""
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass
class InstanceRecord:
    """A checked, non-crowd annotation as the dataset keeps it."""

    ann_id: int
    box: tuple[float, float, float, float]  # xyxy, clipped to the image
    label: int
    segmentation: list[list[float]] | dict[str, Any] | None


@dataclass
class ImageRecord:
    """A checked image record and the instances kept on it."""

    image_id: int
    file_name: str
    path: str
    height: int
    width: int
    instances: list[InstanceRecord] = field(default_factory=list)


def is_number(v: Any) -> bool:
    """Whether ``v`` is a finite JSON number (a bool is not)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# A COCO train2017-sized file holds ~60M polygon coordinates: a Python call per number cost ~40 s of setup.
# Its lists are short (~70 numbers per annotation), where numpy's fixed cost per call (converting the list
# included) outweighs its speed, so the helpers below run the builtins' C loops over each list (type,
# isfinite, min, max), with the exact answers of the per-number checks: only lists of plain ints and floats
# take the fast path.
def _are_numbers(values: list[Any]) -> bool:
    """``all(is_number(v) for v in values)``, without a Python call per value."""
    types = list(map(type, values))  # counted below: faster than a set of them
    floats = types.count(float)
    if floats == len(types):
        # The usual polygon. A sum of finite floats is finite unless it overflows: only then, or when a NaN or
        # an infinity is among them, is each value looked at (``sum`` is ~5x faster than ``isfinite`` each).
        return math.isfinite(sum(values)) or all(map(math.isfinite, values))
    if floats + types.count(int) == len(types):
        return all(map(math.isfinite, values))
    return all(is_number(v) for v in values)  # bools, other types, subclasses of int or float


def _are_counts(values: list[Any]) -> bool:
    """``all(is_int(v) and v >= 0 for v in values)``, without a Python call per value."""
    if set(map(type, values)) <= {int}:
        return not values or min(values) >= 0
    return all(is_int(v) and v >= 0 for v in values)


# (min x, min y, max x, max y) of a segmentation or box, in pixels.
Extent = tuple[float, float, float, float]


def _polygon_extent(seg: list[list[float]], empty: float | None = None) -> Extent:
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


def is_size(v: Any) -> bool:
    """Whether ``v`` is a positive integer."""
    return is_int(v) and v > 0


def leaves_folder(file_name: str) -> bool:
    """Whether ``file_name`` names a file outside the folder it is relative to: an absolute path, or one that
    climbs out with ``..``. Read from the name alone: a link inside the folder may point anywhere."""
    norm = os.path.normpath(file_name)
    return os.path.isabs(norm) or norm == os.pardir or norm.startswith(os.pardir + os.sep)


# The two helpers below give what the builtins' ``min`` and ``max`` give (the same value, of the same type: a
# message shows it), without their cost per call (~0.3 us each; ~20 per annotation, 860k annotations).
def _clamp(v: float, high: float) -> float:
    """``min(max(v, 0.0), high)``."""
    v = 0.0 if 0.0 > v else v
    return high if high < v else v


def _overlap(a1: float, a2: float, b1: float, b2: float) -> float:
    """``max(0.0, min(a2, b2) - max(a1, b1))``: how long ``[a1, a2]`` and ``[b1, b2]`` overlap."""
    length = (b2 if b2 < a2 else a2) - (b1 if b1 > a1 else a1)
    return length if length > 0.0 else 0.0


def clipped_xyxy(bbox: list[float], h: int, w: int) -> Extent:
    """A COCO ``[x, y, w, h]`` box as ``(x1, y1, x2, y2)`` clipped to an ``h x w`` image."""
    x, y, bw, bh = bbox
    return _clamp(x, w), _clamp(y, h), _clamp(x + bw, w), _clamp(y + bh, h)


def malformed_box(bbox: Any) -> tuple[str, str] | None:
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


def far_box(bbox: list[float], h: int, w: int) -> tuple[str, str] | None:
    """``(kind, what is wrong and the fix)`` for a box (COCO xywh) reaching far outside an ``h x w`` image."""
    x, y, bw, bh = bbox
    far = _far_outside(x, y, x + bw, y + bh, h, w)
    if far is None:
        return None
    return "coordinates_far_outside", f"has box {bbox} (xywh), which {far}; fix it or delete the annotation"


def iscrowd_problem(ann: dict[str, Any]) -> tuple[str, str] | None:
    """``(kind, what is wrong and the fix)`` unless ``iscrowd`` is missing or the integer 0 or 1: a ``"0"``, a
    2 or a ``null`` would be read by truthiness, turning an object into a crowd region or back."""
    value = ann.get("iscrowd", 0)
    if is_int(value) and value in (0, 1):
        return None
    return "malformed_annotation", f"has iscrowd {value!r}, expected 0 or 1; fix the record"


def check_segmentation(seg: Any, h: int, w: int) -> tuple[Any, Extent | None, tuple[str, str] | None]:
    """``(cleaned segmentation, its polygons' extent, None)``, or ``(None, None, (kind, what is wrong))``.

    Polygon parts with fewer than 3 points or an odd number of coordinates are dropped (detectron2 does
    the same; a 4-number part would otherwise be read by pycocotools as a box); an annotation left without
    a polygon is ``degenerate_polygon``. A polygon reaching far outside the image (any part of it, so that
    nothing pycocotools rasterises does) is ``coordinates_far_outside``. The extent is that of the kept parts
    (see ``_polygon_extent``), for ``segmentation_off_its_box``; None for an RLE.
    """
    if isinstance(seg, list):
        for part in seg:
            if not isinstance(part, list) or not _are_numbers(part):
                return None, None, ("malformed_segmentation", "a polygon part is not a list of numbers")
        # Found once per polygon: ~60M coordinates in COCO train2017, where each pass over them costs seconds.
        extent = _polygon_extent(seg, empty=0.0)
        if (far := _far_outside(*extent, h, w)) is not None:
            return None, None, ("coordinates_far_outside", f"a polygon {far}")
        parts = [part for part in seg if len(part) >= 6 and len(part) % 2 == 0]
        if not parts:
            return None, None, ("degenerate_polygon", "no polygon with at least 3 x,y points")
        if len(parts) < len(seg):
            extent = _polygon_extent(parts)
        return parts, extent, None
    if isinstance(seg, dict):
        problem = _rle_problem(seg, h, w)
        return (None, None, problem) if problem is not None else (seg, None, None)
    problem = f"segmentation is {type(seg).__name__}, expected polygons (list) or RLE (dict)"
    return None, None, ("malformed_segmentation", problem)


def _rle_problem(seg: dict[str, Any], h: int, w: int) -> tuple[str, str] | None:
    """``(kind, what is wrong)`` for an RLE that is not one of an ``h x w`` mask, else None."""
    size, counts = seg.get("size"), seg.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and all(is_int(v) for v in size)):
        return "malformed_segmentation", f"RLE 'size' is {size!r}, expected [height, width]"
    if list(size) != [h, w]:
        return "rle_size_mismatch", f"RLE size {size} differs from the image size [{h}, {w}]"
    if isinstance(counts, list):
        if not _are_counts(counts) or sum(counts) != h * w:
            problem = "uncompressed RLE counts must be non-negative ints summing to height*width"
            return "malformed_segmentation", problem
    elif not isinstance(counts, (str, bytes)):
        problem = f"RLE 'counts' is {type(counts).__name__}, expected a string or a list of ints"
        return "malformed_segmentation", problem
    else:
        try:  # a compressed string that is not an RLE of this size decodes to nonsense, not an error
            area = int(mask_utils.area({"size": size, "counts": counts}))
        except Exception:  # noqa: BLE001 (pycocotools raises several kinds)
            area = -1
        if not 0 <= area <= h * w:
            return "malformed_segmentation", f"RLE 'counts' does not decode to a {h}x{w} mask"
    return None


def segmentation_off_its_box(
    seg: list[list[float]] | dict[str, Any], box: Extent, h: int, w: int, extent: Extent | None
) -> str | None:
    """What is wrong when a checked segmentation lies elsewhere than its box (xyxy, clipped to the image).

    Its extent (polygon vertices: ``extent``, as ``check_segmentation`` returns it; or, where that is None,
    the RLE's pixels, found here; an empty RLE is not judged), clipped like the box, must touch the box grown
    by 1 px and, for a box of 4 px or more each way (a thinner one is within rasterising error of its mask),
    overlap it with an IoU of at least 0.1.
    """
    if extent is not None:
        x1, y1, x2, y2 = extent
    else:
        rle = mask_utils.frPyObjects(seg, h, w) if isinstance(seg["counts"], list) else seg
        if not mask_utils.area(rle):
            return None
        x1, y1, bw, bh = (float(v) for v in mask_utils.toBbox(rle))
        x2, y2 = x1 + bw, y1 + bh
    x1, y1, x2, y2 = _clamp(x1, w), _clamp(y1, h), _clamp(x2, w), _clamp(y2, h)
    touches = x2 >= box[0] - 1 and x1 <= box[2] + 1 and y2 >= box[1] - 1 and y1 <= box[3] + 1
    if touches and min(box[2] - box[0], box[3] - box[1]) < 4:
        return None
    # One pair per annotation: pycocotools' iou costs 14 us a call, 12 s over COCO train2017's 860k.
    inter = _overlap(x1, x2, box[0], box[2]) * _overlap(y1, y2, box[1], box[3])
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
