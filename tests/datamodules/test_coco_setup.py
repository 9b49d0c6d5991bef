"""Tests for the training setup of vitdense.datamodules.coco at COCO's scale: the record checks give the same
answers and messages without a Python call per coordinate, and the parsed training file is let go."""

from __future__ import annotations

import gc
import json
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vitdense.datamodules import (
    BadDataError,
    CocoDataModule,
    CocoDetection,
    CocoFile,
    EvalTransform,
    coco_checks,
)
from vitdense.datamodules.bad_data import SKIP_HINT
from vitdense.datamodules.coco_file import collector_paused, load_coco
from vitdense.datamodules.packed import PackedRecords

MakeCoco = Callable[..., tuple[Path, Path]]
IMG = {"id": 1, "file_name": "a.png", "height": 28, "width": 56}
NAN, INF = float("nan"), float("inf")
BOX = "expected [x, y, width, height] numbers"
NOT_NUMBERS = "a polygon part is not a list of numbers"
GIVE = "give polygons [[x1, y1, x2, y2, x3, y3, ...]] or RLE {'size': [h, w], 'counts': ...}"
COUNTS = "uncompressed RLE counts must be non-negative ints summing to height*width"
FAR = (
    "px outside the 56x28 (w x h) image, further than a point dragged past its border can (1000 px: the "
    "image's longer side, at least 1000): the coordinates are corrupt, another image's or in other units"
)
OFF = (
    "(x1, y1, x2, y2, in the image), IoU 0.00: one of them is in other units (e.g. normalised to 0-1) or of "
    "another image; fix it"
)


def _ann(bbox: list[Any], segmentation: Any) -> dict[str, Any]:
    ann = {"id": 77, "image_id": 1, "category_id": 1, "bbox": bbox, "iscrowd": 0}
    return ann | {"segmentation": segmentation}


def _rle(counts: list[Any]) -> dict[str, Any]:
    return {"size": [28, 56], "counts": counts}


SQUARE = [[2, 2, 8, 2, 8, 8, 2, 8]]
# name: (bbox, segmentation, the problem as a training split states it, the fix as an evaluation split does);
# the ints and floats of a message are those of the file (a span's 5 stays 5, its 5.0 stays 5.0).
NUMBER_CASES: dict[str, tuple[list[Any], Any, str, str]] = {
    "box_nan": ([2, 2, NAN, 6], SQUARE, f"has bbox [2, 2, nan, 6], {BOX}", ""),
    "box_inf": ([2, 2, 6, -INF], SQUARE, f"has bbox [2, 2, 6, -inf], {BOX}", ""),
    "box_bool": ([2, 2, True, 6], SQUARE, f"has bbox [2, 2, True, 6], {BOX}", ""),
    "box_string": ([2, "2", 6, 6], SQUARE, f"has bbox [2, '2', 6, 6], {BOX}", ""),
    "box_nested": ([2, 2, [6], 6], SQUARE, f"has bbox [2, 2, [6], 6], {BOX}", ""),
    "box_null": ([2, 2, 6, None], SQUARE, f"has bbox [2, 2, 6, None], {BOX}", ""),
    "polygon_nan": ([2, 2, 6, 6], [[2, 2, NAN, 2, 8, 8]], NOT_NUMBERS, GIVE),
    "polygon_inf": ([2, 2, 6, 6], [[2, 2, 8, 2, 8, -INF]], NOT_NUMBERS, GIVE),
    "polygon_bool": ([2, 2, 6, 6], [[2, 2, 8, True, 8, 8]], NOT_NUMBERS, GIVE),
    "polygon_string": ([2, 2, 6, 6], [[2, 2, 8, 2, "8", 8]], NOT_NUMBERS, GIVE),
    "polygon_nested": ([2, 2, 6, 6], [[2, 2, [8, 2], 8, 8]], NOT_NUMBERS, GIVE),
    "polygon_null": ([2, 2, 6, 6], [[2, 2, 8, 2, 8, None]], NOT_NUMBERS, GIVE),
    "polygon_second_part_bool": ([2, 2, 6, 6], [*SQUARE, [2, 2, False, 2, 8, 8]], NOT_NUMBERS, GIVE),
    "polygon_not_in_parts": ([2, 2, 6, 6], [2, 2, 8, 2, 8, 8], NOT_NUMBERS, GIVE),
    "polygon_far_int": ([2, 2, 6, 6], [[2, 2, 5000, 2, 8, 8]], f"a polygon reaches 4944 {FAR}", ""),
    "polygon_far_float_second_part": (
        [2, 2, 6, 6],
        [SQUARE[0], [2.5, -3000.25, 8, 2, 8, 8]],
        f"a polygon reaches 3000.25 {FAR}",
        "",
    ),
    "polygon_off_its_box_int_first": (
        [40, 2, 10, 10],
        [[5, 2, 5.0, 8, 10, 8.0, 10.0, 2]],
        f"has a segmentation spanning [5, 2, 10, 8] but a box spanning [40, 2, 50, 12] {OFF}",
        "",
    ),
    "polygon_off_its_box_float_first": (
        [40, 2, 10, 10],
        [[5.0, 2.0, 5, 8, 10.0, 8, 10, 2.0]],
        f"has a segmentation spanning [5.0, 2.0, 10.0, 8] but a box spanning [40, 2, 50, 12] {OFF}",
        "",
    ),
    "polygon_off_its_box_min_in_second_part": (
        [40, 2, 10, 10],
        [[6, 3, 9, 3, 9, 7], [5.5, 2, 8, 2.0, 8, 8]],
        f"has a segmentation spanning [5.5, 2, 9, 8] but a box spanning [40, 2, 50, 12] {OFF}",
        "",
    ),
    "rle_counts_negative": ([2, 2, 6, 6], _rle([1569, -1]), COUNTS, GIVE),
    "rle_counts_bool": ([2, 2, 6, 6], _rle([True, 1567]), COUNTS, GIVE),
    "rle_counts_float": ([2, 2, 6, 6], _rle([1.0, 1567]), COUNTS, GIVE),
    "rle_counts_string": ([2, 2, 6, 6], _rle(["1", 1567]), COUNTS, GIVE),
}


def _expected(ann_file: Path, problem: str, fix: str, evaluation: bool) -> str:
    if problem.startswith("has bbox"):
        problem += "; fix the box"
    elif problem.startswith("has a segmentation spanning"):
        pass
    elif evaluation:
        problem = f"has a bad segmentation: {problem}; fix it or delete the annotation"
    else:
        problem = f"has a bad segmentation: {problem}; {fix or 'fix it or delete the annotation'}"
    return f"{ann_file}: annotation id 77 (image id 1) {problem}, {SKIP_HINT}"


@pytest.mark.parametrize("evaluation", [False, True], ids=["train", "segm"])
@pytest.mark.parametrize("case", list(NUMBER_CASES))
def test_coordinates_that_are_no_finite_numbers_give_the_messages_they_always_gave(
    make_coco: MakeCoco, case: str, evaluation: bool
) -> None:
    bbox, segmentation, problem, fix = NUMBER_CASES[case]
    root, ann_file = make_coco([IMG], [_ann([2, 2, 6, 6], SQUARE) | {"id": 1}, _ann(bbox, segmentation)])
    with pytest.raises(BadDataError) as info:
        CocoDetection(
            root, ann_file, EvalTransform(56), masks=True, evaluation="segm" if evaluation else None
        )
    assert str(info.value) == _expected(ann_file, problem, fix, evaluation)


VALUE_LISTS = [
    [],
    [1, 2.5, -3, 1e300],
    [1, NAN],
    [INF, 1],
    [1, True],
    [False],
    [1, "2"],
    [1, None],
    [1, [2]],
    [np.float64(1.5), 2],  # a subclass of float: a number
    [np.float64(NAN)],
    [np.int64(2)],  # not a subclass of int: no number
    [0, 5, 0],
    [3, -1],
]


@pytest.mark.parametrize("values", VALUE_LISTS, ids=repr)
def test_list_checks_answer_as_the_checks_per_value(values: list[Any]) -> None:
    assert coco_checks._are_numbers(values) == all(coco_checks.is_number(v) for v in values)
    assert coco_checks._are_counts(values) == all(coco_checks.is_int(v) and v >= 0 for v in values)


@pytest.mark.parametrize(
    "seg",
    [[[5, 2, 5.0, 8, 10, 8.0, 10.0, 2]], [[5.0, 2.0, 5, 8]], [[7, 1], [3.5, 9, 3, 0]], [[4], [1, 2]], [[]]],
    ids=repr,
)
def test_polygon_extent_is_the_values_min_and_max_give(seg: list[list[float]]) -> None:
    xs = [v for part in seg for v in part[0::2]] or [0.0]
    ys = [v for part in seg for v in part[1::2]] or [0.0]
    expected = (min(xs), min(ys), max(xs), max(ys))
    extent = coco_checks._polygon_extent(seg, empty=0.0)
    assert extent == expected and [type(v) for v in extent] == [type(v) for v in expected]


def test_the_training_file_is_let_go_once_its_records_are_packed(make_coco: MakeCoco, tmp_path: Path) -> None:
    root, train_file = make_coco([IMG], [_ann([1, 1, 5, 5], SQUARE)])
    val_file = tmp_path / "val.json"
    val_file.write_text(json.dumps(json.loads(train_file.read_text())))
    dm = CocoDataModule(str(root), str(train_file), str(root), str(val_file), image_size=56, num_workers=0)
    dm.setup("fit")
    gc.collect()
    parsed = [o.path for o in gc.get_objects() if type(o) is CocoFile]
    assert train_file not in parsed, "training reads its packed records only"
    assert parsed.count(val_file) == 1 and dm.val_dataset.coco.path == val_file, "COCOeval scores against it"
    assert dm.train_dataset[0][1]["image_id"] == 1  # a sample reads its packed record only
    again = dm.split_dataset("train", "error")  # e.g. the data check's: the file is parsed again
    assert again.image_ids == dm.train_dataset.image_ids == [1] and again.coco is None


@pytest.mark.parametrize("enabled", [True, False])
def test_parsing_leaves_the_garbage_collector_as_it_found_it(
    make_coco: MakeCoco, tmp_path: Path, enabled: bool
) -> None:
    root, ann_file = make_coco([IMG], [_ann([1, 1, 5, 5], SQUARE)])
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    (gc.enable if enabled else gc.disable)()
    try:
        CocoDetection(root, ann_file, EvalTransform(56), coco=load_coco(ann_file), masks=True)
        with pytest.raises(BadDataError, match="not valid JSON"):
            load_coco(broken)
        assert gc.isenabled() is enabled
    finally:
        gc.enable()


def test_what_is_built_while_the_collector_is_paused_goes_to_its_oldest_generation_unwalked() -> None:
    gc.collect()
    with collector_paused():
        built = [[index] for index in range(5000)]
    assert gc.isenabled() and gc.get_freeze_count() == 0
    assert any(o is built for o in gc.get_objects(generation=2)), "the first collections after would walk it"


def test_objects_frozen_before_stay_frozen_and_what_is_built_stays_young() -> None:
    gc.collect()
    gc.freeze()  # as a server does before forking its workers
    try:
        frozen = gc.get_freeze_count()
        with collector_paused():
            built = [[index] for index in range(5000)]
        assert gc.isenabled() and gc.get_freeze_count() == frozen
        assert not any(o is built for o in gc.get_objects(generation=2))
    finally:
        gc.unfreeze()


def test_packing_records_holds_their_pickles_once() -> None:
    records = [{"id": i, "polygon": [float(i + k) for k in range(300)]} for i in range(3000)]
    tracemalloc.start()
    try:
        packed = PackedRecords(records)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert list(packed) == records
    assert peak < 1.3 * packed._buffer.nbytes, "not a list of pickles joined into a second copy"
