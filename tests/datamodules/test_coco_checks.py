"""Tests for vitdense.datamodules.coco_checks where its fast paths could part from the plain checks: a list of
floats judged by its sum, and a polygon's extent found once and reused for the check against its box."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers import MakeCoco
from vitdense.datamodules import BadDataError, CocoDetection, EvalTransform, coco_checks
from vitdense.datamodules.bad_data import SKIP_HINT

IMG = {"id": 1, "file_name": "a.png", "height": 28, "width": 56}
NAN, INF = float("nan"), float("inf")
GOOD = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 6, 6], "area": 18.0, "iscrowd": 0}
GOOD["segmentation"] = [[2, 2, 8, 2, 8, 8]]


@pytest.mark.parametrize(
    "values",
    [
        [1.5, 2.25, -3.0],
        [1e308, 1e308],  # finite numbers whose sum overflows
        [-1e308, -1e308, 5.0],
        [1.5, NAN],
        [INF, 1.5],
        [1.5, -INF],
        [INF, -INF],  # a sum that is NaN
        [2.0, np.float64(NAN)],  # a subclass of float among floats
    ],
    ids=repr,
)
def test_a_list_of_floats_is_judged_as_each_float_is(values: list[Any]) -> None:
    assert coco_checks._are_numbers(values) == all(coco_checks.is_number(v) for v in values)


# Of equal values of another type or sign (0, 0.0 and -0.0; 56 and 56.0), which one a message shows.
EDGES = [-3, -0.0, 0, 0.0, 2, 2.5, 56, 56.0, 60.5]


def _same(a: float, b: float) -> bool:
    return type(a) is type(b) and repr(a) == repr(b)


def test_clamp_and_overlap_give_what_min_and_max_give() -> None:
    for v in EDGES:
        for high in (56, 56.0, 2.5):
            assert _same(coco_checks._clamp(v, high), min(max(v, 0.0), high)), (v, high)
    for a1 in EDGES:
        for a2 in EDGES:
            for b1, b2 in ((0, 56.0), (-0.0, 2), (2.5, 56), (56.0, 60.5)):
                expected = max(0.0, min(a2, b2) - max(a1, b1))
                assert _same(coco_checks._overlap(a1, a2, b1, b2), expected), (a1, a2, b1, b2)


# Image 56x28; box xywh [2, 2, 6, 6] (xyxy [2, 2, 8, 8]). Each polygon has a kept part and a 4-number part
# that is dropped: the check against the box sees the kept part's extent only.
ON_ITS_BOX = [[2, 2, 8, 2, 8, 8, 2, 8], [50.5, 20, 52, 22]]  # with the dropped part: IoU 36 / 1000
OFF_ITS_BOX = [[40, 2.5, 50, 2.5, 50, 12, 40, 12], [3, 3, 7, 7]]  # with the dropped part: [3, 2.5, 50, 12]
OFF_MESSAGE = (
    "has a segmentation spanning [40, 2.5, 50, 12] but a box spanning [2, 2, 8, 8] (x1, y1, x2, y2, in the "
    "image), IoU 0.00: one of them is in other units (e.g. normalised to 0-1) or of another image; fix it"
)


def _files(make_coco: MakeCoco, segmentation: list[list[float]]) -> tuple[Path, Path]:
    return make_coco([IMG], [GOOD, GOOD | {"id": 77, "segmentation": segmentation}])


@pytest.mark.parametrize("evaluation", [None, "segm"])
def test_a_polygon_on_its_box_is_kept_whatever_its_dropped_parts_span(
    make_coco: MakeCoco, evaluation: str | None
) -> None:
    root, ann_file = _files(make_coco, ON_ITS_BOX)
    ds = CocoDetection(root, ann_file, EvalTransform(56), masks=evaluation is None, evaluation=evaluation)
    assert not ds.skipped and ds.num_objects == 2


@pytest.mark.parametrize("evaluation", [None, "segm"])
def test_a_polygon_off_its_box_is_reported_with_its_kept_parts_extent_under_each_policy(
    make_coco: MakeCoco, evaluation: str | None
) -> None:
    root, ann_file = _files(make_coco, OFF_ITS_BOX)
    expected = f"{ann_file}: annotation id 77 (image id 1) {OFF_MESSAGE}, {SKIP_HINT}"
    arguments: dict[str, Any] = {"masks": evaluation is None, "evaluation": evaluation}
    with pytest.raises(BadDataError) as info:
        CocoDetection(root, ann_file, EvalTransform(56), **arguments)
    assert str(info.value) == expected
    ds = CocoDetection(root, ann_file, EvalTransform(56), on_bad_data="skip", **arguments)
    assert ds.skipped == {"segmentation_box_mismatch": 1}
    (finding,) = [f for f in ds.findings if f.severity != "note"]
    assert (finding.message, finding.record) == (expected, "annotation id 77")
    assert ds.num_objects == 1
