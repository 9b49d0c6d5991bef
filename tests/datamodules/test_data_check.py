"""Tests for vitdense.datamodules.data_check: a corpus of bad data, one case per kind, under both policies.

Every case is built in ``tmp_path`` next to one good record and checked three ways: ``on_bad_data="error"``
raises :class:`BadDataError` naming the file and the record; ``"skip"`` drops the record and counts it
under its kind while the good record survives; :func:`check_data` reports it with its file and record.
Images in unusual modes are notes: converted and used under both policies.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import torch
from jsonargparse import ArgumentError, ArgumentParser
from PIL import Image
from pycocotools import mask as mask_utils
from torch.utils.data import DataLoader

from tests.helpers import MakeCoco, coco_ann, first_worker_error
from vitdense.datamodules import (
    ADE20KDataModule,
    BadDataError,
    CocoDataModule,
    CocoDetection,
    EvalTransform,
    SegmentationEvalTransform,
    SegmentationFolder,
    SegmentationFolderDataModule,
    SegmentationTrainTransform,
    ShapesDataModule,
    ShapesSegmentationDataModule,
    TrainTransform,
    check_data,
    check_datasets,
    collate_detection,
    collate_segmentation,
)
from vitdense.datamodules.images import image_conversions
from vitdense.tasks.coco_evaluator import CocoEvaluator

GOOD_IMAGE = {"id": 1, "file_name": "a.png", "height": 28, "width": 56}
BAD_IMAGE = {"id": 2, "file_name": "b.png", "height": 28, "width": 56}
ANNOTATIONS = "annotations.json"


def _noise(h: int, w: int, channels: int = 3) -> np.ndarray:
    shape = (h, w, channels) if channels > 1 else (h, w)
    return np.random.default_rng(h * w).integers(0, 256, shape, dtype=np.uint8)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the header parses, decoding fails


def _save_noise(path: Path, h: int = 28, w: int = 56, **kwargs: Any) -> None:
    Image.fromarray(_noise(h, w)).save(path, **kwargs)


# ----------------------------------------------------------------------------------------------------
# COCO corpus
# ----------------------------------------------------------------------------------------------------


@dataclass
class CocoCase:
    """Extra records next to the good image 1 (annotation 1) and what must be found.

    ``damage`` rewrites files after they are written; ``kind`` is counted ``count`` times; the finding names
    a file ending in ``file`` and the record ``record``.
    """

    images: list[dict[str, Any]]
    anns: list[dict[str, Any]]
    kind: str
    file: str
    record: str
    count: int = 1
    damage: Callable[[Path], None] | None = None


def _garbage(root: Path) -> None:
    (root / "b.png").write_bytes(b"this is not a PNG file at all")


def _truncated_jpeg(root: Path) -> None:
    _save_noise(root / "b.jpg", quality=95)
    _truncate(root / "b.jpg")


def _wrong_size(root: Path) -> None:
    _save_noise(root / "b.png", 28, 40)


def _multi_page_tiff(path: Path) -> None:
    with tifffile.TiffWriter(path) as tif:  # a stack: which page is the image?
        for _ in range(3):
            tif.write(_noise(28, 56), photometric="rgb")


def _five_band_tiff(path: Path) -> None:
    bands = np.dstack([_noise(28, 56), _noise(28, 56)[..., :2]])  # e.g. B, G, R, NIR, SWIR
    tifffile.imwrite(path, bands, photometric="minisblack", planarconfig="contig")


def _image_case(images: list[dict[str, Any]], kind: str, file: str, **options: Any) -> CocoCase:
    """A case of a bad image record, image 2, which annotation 2 annotates."""
    return CocoCase(images, [coco_ann(2, image_id=2)], kind, file, "image id 2", **options)


BAD_B = [BAD_IMAGE]
A77 = "annotation id 77"
B = "b.tif"
B_TIF = [BAD_IMAGE | {"file_name": B, "write": False}]
FAR, BAD_SEGMENTATION, DEGENERATE = "coordinates_far_outside", "malformed_segmentation", "degenerate_polygon"
COCO_CASES: dict[str, CocoCase] = {
    "corrupt_image": _image_case(BAD_B, "corrupt_image", "b.png", damage=_garbage),
    "truncated_image": _image_case(
        [BAD_IMAGE | {"file_name": "b.jpg"}], "corrupt_image", "b.jpg", damage=_truncated_jpeg
    ),
    "missing_image": _image_case([BAD_IMAGE | {"write": False}], "missing_image", "b.png"),
    "size_mismatch": _image_case(BAD_B, "size_mismatch", "b.png", damage=_wrong_size),
    "image_too_small": CocoCase(
        [BAD_IMAGE | {"height": 10, "width": 12}],
        [coco_ann(2, [1, 1, 4, 4], image_id=2)],
        "image_too_small",
        "b.png",
        "image id 2",
    ),
    "image_record_wrong_type": _image_case(
        [BAD_IMAGE | {"height": "28", "write": False}], "malformed_image_record", ANNOTATIONS
    ),
    "image_record_without_id": CocoCase(
        [{"file_name": "b.png", "height": 28, "width": 56}],
        [],
        "malformed_image_record",
        ANNOTATIONS,
        "images[1]",
    ),
    "annotation_without_category": CocoCase(
        [],
        [{k: v for k, v in coco_ann(77).items() if k != "category_id"}],
        "malformed_annotation",
        ANNOTATIONS,
        A77,
    ),
    "annotation_wrong_type": CocoCase(
        [], [coco_ann(77, image_id="1")], "malformed_annotation", ANNOTATIONS, A77
    ),
    "malformed_box": CocoCase([], [coco_ann(77, bbox=["1", 1, 5, 5])], "malformed_box", ANNOTATIONS, A77),
    "duplicate_image_id": _image_case(
        [BAD_IMAGE, BAD_IMAGE | {"file_name": "c.png"}], "duplicate_image_id", ANNOTATIONS, count=2
    ),
    "duplicate_annotation_id": CocoCase(
        [], [coco_ann(1, bbox=[20, 10, 5, 5])], "duplicate_annotation_id", ANNOTATIONS, "annotation id 1"
    ),
    "unknown_image": CocoCase([], [coco_ann(77, image_id=999)], "unknown_image", ANNOTATIONS, A77),
    "unknown_category": CocoCase([], [coco_ann(77, category_id=99)], "unknown_category", ANNOTATIONS, A77),
    "zero_area_box": CocoCase([], [coco_ann(77, bbox=[1, 1, 0, 5])], "degenerate_box", ANNOTATIONS, A77),
    "negative_box": CocoCase([], [coco_ann(77, bbox=[1, 1, 5, -2])], "degenerate_box", ANNOTATIONS, A77),
    "box_outside_image": CocoCase(
        [], [coco_ann(77, bbox=[57, 2, 10, 5])], "box_outside_image", ANNOTATIONS, A77
    ),
    "polygon_two_points": CocoCase(
        [], [coco_ann(77, segmentation=[[1, 1, 5, 5]])], "degenerate_polygon", ANNOTATIONS, A77
    ),
    "rle_size_mismatch": CocoCase(
        [],
        [coco_ann(77, segmentation={"size": [10, 10], "counts": "abc"})],
        "rle_size_mismatch",
        ANNOTATIONS,
        A77,
    ),
    "segmentation_wrong_type": CocoCase(
        [], [coco_ann(77, segmentation="polygon")], "malformed_segmentation", ANNOTATIONS, A77
    ),
    # A polygon exported in 0-1 units: training boxes come from masks, so the object would vanish or move.
    "normalised_polygon": CocoCase(
        [],
        [coco_ann(77, bbox=[20, 5, 20, 12], segmentation=[[0.36, 0.18, 0.71, 0.18, 0.71, 0.61, 0.36, 0.61]])],
        "segmentation_box_mismatch",
        ANNOTATIONS,
        A77,
    ),
    "normalised_polygon_in_a_corner_box": CocoCase(
        [],
        [coco_ann(77, bbox=[0, 0, 20, 12], segmentation=[[0.0, 0.0, 0.36, 0.0, 0.36, 0.43, 0.0, 0.43]])],
        "segmentation_box_mismatch",
        ANNOTATIONS,
        A77,
    ),
    # Corrupted coordinates, far enough to be named yet cheap to rasterise should a regression let them
    # through (at 1e9, pycocotools asks ~20 GB: see test_a_vertex_at_1e9_leaves_the_process_alive_and_named).
    "polygon_vertex_far_outside": CocoCase(
        [], [coco_ann(77, segmentation=[[2, 2, 1e5, 2, 10, 8, 2, 8]])], FAR, ANNOTATIONS, A77
    ),
    # A 4-number part is dropped in training, but pycocotools reads it as a box, rasterised as a polygon.
    "box_like_part_far_outside": CocoCase(
        [],
        [coco_ann(77, segmentation=[[2, 2, 10, 2, 10, 8, 2, 8], [2, 2, 1e5, 8]])],
        FAR,
        ANNOTATIONS,
        A77,
    ),
    # Clipped to the image, it would train a box as wide as the image.
    "box_far_outside": CocoCase([], [coco_ann(77, bbox=[2, 2, 1e5, 6])], FAR, ANNOTATIONS, A77),
    # Read by truthiness, each would turn an object into a crowd region, or back, without a word.
    "iscrowd_string": CocoCase([], [coco_ann(77, iscrowd="0")], "malformed_annotation", ANNOTATIONS, A77),
    "iscrowd_2": CocoCase([], [coco_ann(77, iscrowd=2)], "malformed_annotation", ANNOTATIONS, A77),
    "iscrowd_true": CocoCase([], [coco_ann(77, iscrowd=True)], "malformed_annotation", ANNOTATIONS, A77),
    "iscrowd_null": CocoCase([], [coco_ann(77, iscrowd=None)], "malformed_annotation", ANNOTATIONS, A77),
    "polygon_with_nan": CocoCase(
        [], [coco_ann(77, segmentation=[[2, 2, float("nan"), 2, 10, 8]])], BAD_SEGMENTATION, ANNOTATIONS, A77
    ),
    "segmentation_empty_dict": CocoCase(
        [], [coco_ann(77, segmentation={})], BAD_SEGMENTATION, ANNOTATIONS, A77
    ),
    "segmentation_empty_list": CocoCase([], [coco_ann(77, segmentation=[])], DEGENERATE, ANNOTATIONS, A77),
    "category_id_float": CocoCase(
        [], [coco_ann(77, category_id=1.0)], "malformed_annotation", ANNOTATIONS, A77
    ),
    "image_0x0": _image_case(
        [BAD_IMAGE | {"height": 0, "width": 0, "write": False}], "malformed_image_record", ANNOTATIONS
    ),
    "image_negative_width": _image_case(
        [BAD_IMAGE | {"width": -56, "write": False}], "malformed_image_record", ANNOTATIONS
    ),
    # The file exists, outside the folder the DataModule was given: read silently before.
    "image_outside_folder": _image_case(
        [BAD_IMAGE | {"file_name": "../b.png", "write": False}],
        "image_outside_folder",
        "images/../b.png",
        damage=lambda root: _save_noise(root.parent / "b.png"),
    ),
    # More pixels than Pillow decodes: named at construction, before pycocotools rasterises at that size.
    "image_too_large": _image_case(
        [BAD_IMAGE | {"height": 20000, "width": 20000, "write": False}],
        "image_too_large",
        "b.png",
        damage=lambda root: _save_noise(root / "b.png"),
    ),
    "multi_page_tiff": _image_case(B_TIF, "corrupt_image", "b.tif", damage=lambda r: _multi_page_tiff(r / B)),
    "five_band_tiff": _image_case(B_TIF, "corrupt_image", "b.tif", damage=lambda r: _five_band_tiff(r / B)),
}


def _coco_case(make_coco: MakeCoco, case: CocoCase) -> tuple[Path, Path]:
    root, ann_file = make_coco([GOOD_IMAGE, *case.images], [coco_ann(1), *case.anns])
    if case.damage is not None:
        case.damage(root)
    return root, ann_file


def _load_all(dataset: torch.utils.data.Dataset) -> list[dict[str, Any]]:
    """The targets of every sample that loads (an evaluation split gives None for a skipped one)."""
    samples = [dataset[i] for i in range(len(dataset))]
    return [sample[1] for sample in samples if sample is not None]


@pytest.mark.parametrize("name", list(COCO_CASES))
def test_coco_case_raises_naming_file_and_record(make_coco: MakeCoco, name: str) -> None:
    case = COCO_CASES[name]
    root, ann_file = _coco_case(make_coco, case)
    with pytest.raises(BadDataError) as info:
        _load_all(CocoDetection(root, ann_file, EvalTransform(56), masks=True, on_bad_data="error"))
    message = str(info.value)
    assert case.file in message and case.record in message and "on_bad_data='skip'" in message
    assert info.value.finding is not None and info.value.finding.kind == case.kind


@pytest.mark.parametrize("name", list(COCO_CASES))
def test_coco_case_skipped_and_counted(make_coco: MakeCoco, name: str) -> None:
    case = COCO_CASES[name]
    root, ann_file = _coco_case(make_coco, case)
    ds = CocoDetection(root, ann_file, EvalTransform(56), masks=True, on_bad_data="skip")
    targets = _load_all(ds)
    assert ds.skipped == {case.kind: case.count}
    assert all(t["image_id"] != 2 for t in targets), "the bad image is never served"
    good = [t for t in targets if t["image_id"] == 1]
    assert good and good[0]["labels"].tolist() == [1], "the good annotation survives, the bad one does not"


@pytest.mark.parametrize("name", list(COCO_CASES))
def test_coco_case_reported_by_check_data(make_coco: MakeCoco, name: str) -> None:
    case = COCO_CASES[name]
    root, ann_file = _coco_case(make_coco, case)
    dm = CocoDataModule(str(root), str(ann_file), str(root), str(ann_file), image_size=56, num_workers=0)
    report = check_data(dm)
    assert [s.split for s in report.splits] == ["train", "val"], "test has val's files: read once"
    train = report.splits[0]
    assert train.counts() == {case.kind: case.count} and train.notes == 0
    found = [f for f in train.findings if f.kind == case.kind]
    assert all(f.file.endswith(case.file) and f.record == case.record for f in found)
    assert all(case.file in f.message and case.record in f.message for f in found)
    assert 2 not in train.dataset.image_ids and 1 in train.dataset.image_ids
    assert report.errors == sum(s.errors for s in report.splits) >= case.count
    text = report.format()
    assert case.kind in text and case.record in text


# ------------------------------------------------------------------------------ whole annotation files


def _write_json(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


FILE_CASES = {
    "invalid_json": ('{"images": [', "invalid_json"),
    # Python's parser gives up with a RecursionError, which used to escape as a traceback.
    "nested_too_deep": ("[" * 100_000 + "]" * 100_000, "invalid_json"),
    # A hand-merged file: JSON keeps the last 'annotations' list, the first was lost without a word.
    "duplicate_key": (
        '{"images": [], "annotations": [{"id": 1}], "annotations": [], "categories": [{"id": 1}]}',
        "duplicate_key",
    ),
    "category_without_id": (
        json.dumps({"images": [], "annotations": [], "categories": [{"name": "a"}]}),
        "malformed_json",
    ),
    "no_images_list": (json.dumps({"annotations": [], "categories": [{"id": 1}]}), "malformed_json"),
    # Box and polygon both in 0-1 units agree with each other: only the whole file gives it away.
    "normalised_coordinates": (
        json.dumps(
            {
                "images": [GOOD_IMAGE],
                "annotations": [
                    coco_ann(
                        1, bbox=[0.36, 0.18, 0.35, 0.43], segmentation=[[0.36, 0.18, 0.71, 0.18, 0.71, 0.61]]
                    ),
                    coco_ann(2, bbox=[0.1, 0.1, 0.2, 0.2], segmentation=[[0.1, 0.1, 0.3, 0.1, 0.3, 0.3]]),
                ],
                "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
            }
        ),
        "normalised_coordinates",
    ),
    # Corners [x1, y1, x2, y2] where COCO wants [x, y, w, h]: on 5 images of 56 x 28, two of each image's
    # four boxes run past it (the check needs 20 boxes over 5 images before it judges a whole file).
    "corner_boxes": (
        json.dumps(
            {
                "images": [{**GOOD_IMAGE, "id": i, "file_name": f"{i}.png"} for i in range(1, 6)],
                "annotations": [
                    coco_ann(4 * i + j, image_id=i, bbox=bbox)
                    for i in range(1, 6)
                    for j, bbox in enumerate(
                        [[30, 10, 50, 25], [20, 5, 40, 20], [34, 12, 54, 26], [2, 2, 10, 8]]
                    )
                ],
                "categories": [{"id": 1, "name": "a"}],
            }
        ),
        "corner_boxes",
    ),
}


@pytest.mark.parametrize("name", list(FILE_CASES))
def test_unusable_annotation_file_named_under_both_policies(make_coco: MakeCoco, name: str) -> None:
    text, kind = FILE_CASES[name]
    root, train_file = make_coco([GOOD_IMAGE], [coco_ann(1)])
    val_file = _write_json(root.parent / "val.json", text)
    for policy in ("error", "skip"):  # a file that cannot be parsed has no record to drop
        with pytest.raises(BadDataError, match="val.json") as info:
            CocoDetection(root, val_file, EvalTransform(56), on_bad_data=policy)
        assert info.value.finding.kind == kind
    dm = CocoDataModule(str(root), str(train_file), str(root), str(val_file), image_size=56, num_workers=0)
    report = check_data(dm)
    assert report.splits[0].errors == 0
    val = report.splits[1]
    assert val.samples == 0 and val.counts() == {kind: 1} and val.findings[0].file == str(val_file)
    for policy in ("error", "skip"):
        dm = CocoDataModule(
            str(root), str(train_file), str(root), str(val_file), image_size=56, num_workers=0,
            on_bad_data=policy, check_data=True,
        )  # fmt: skip
        with pytest.raises(BadDataError, match="val.json"):
            dm.setup("fit")


def test_a_json_file_with_a_byte_order_mark_or_in_utf16_loads(make_coco: MakeCoco) -> None:
    """Windows tools write a BOM, some UTF-16: both are JSON, and read as such."""
    root, ann_file = make_coco([GOOD_IMAGE], [coco_ann(1)])
    text = ann_file.read_text()
    for encoded in (b"\xef\xbb\xbf" + text.encode(), text.encode("utf-16")):
        ann_file.write_bytes(encoded)
        ds = CocoDetection(root, ann_file, EvalTransform(56), masks=True)
        assert ds.image_ids == [1] and ds[0][1]["labels"].tolist() == [1]


def test_an_annotation_file_that_is_a_folder_says_so(make_coco: MakeCoco) -> None:
    root, _ = make_coco([GOOD_IMAGE], [coco_ann(1)])
    with pytest.raises(FileNotFoundError, match="is a folder, not an annotation file"):
        CocoDetection(root, root, EvalTransform(56))


# ------------------------------------------------------------------------------------------------ notes


def _write_mode(root: Path, name: str, array: np.ndarray, mode: str | None = None, **kwargs: Any) -> None:
    image = Image.fromarray(array)
    if mode is not None:
        image = image.convert(mode)
    image.save(root / name, **kwargs)


def _exif_rotated(root: Path) -> None:
    image = Image.fromarray(_noise(28, 56))
    exif = image.getexif()
    exif[0x0112] = 6  # shown rotated by 90 degrees: 56 high, 28 wide
    image.save(root / "b.jpg", exif=exif.tobytes())


NOTE_CASES: dict[str, tuple[str, Callable[[Path], None], dict[str, int]]] = {
    # name: (file, writer, record size override)
    "grayscale": ("b.png", lambda r: _write_mode(r, "b.png", _noise(28, 56, 1)), {}),
    "rgba": ("b.png", lambda r: _write_mode(r, "b.png", _noise(28, 56, 4)), {}),
    "palette": ("b.png", lambda r: _write_mode(r, "b.png", _noise(28, 56), "P"), {}),
    "16_bit": ("b.png", lambda r: _write_mode(r, "b.png", np.full((28, 56), 40000, np.uint16)), {}),
    "float_tiff": ("b.tif", lambda r: _write_mode(r, "b.tif", np.random.rand(28, 56).astype(np.float32)), {}),
    # What GIS tools and scientific cameras write; Pillow refused both as unreadable.
    "16_bit_rgb_tiff": (
        "b.tif",
        lambda r: tifffile.imwrite(r / "b.tif", _noise(28, 56).astype(np.uint16) * 257, photometric="rgb"),
        {},
    ),
    "float_rgb_tiff": (
        "b.tif",
        lambda r: tifffile.imwrite(r / "b.tif", np.random.rand(28, 56, 3).astype("f4"), photometric="rgb"),
        {},
    ),
    "exif_rotation": ("b.jpg", _exif_rotated, {"height": 56, "width": 28}),
}
NOTE_KINDS = {
    "grayscale": "mode_grayscale",
    "rgba": "mode_alpha",
    "palette": "mode_palette",
    "16_bit": "mode_high_bit_depth",
    "float_tiff": "mode_float",
    "16_bit_rgb_tiff": "mode_high_bit_depth",
    "float_rgb_tiff": "mode_float",
    "exif_rotation": "exif_rotation",
}


@pytest.mark.parametrize("name", list(NOTE_CASES))
def test_unusual_image_modes_are_converted_not_dropped(make_coco: MakeCoco, name: str) -> None:
    file, write, size = NOTE_CASES[name]
    record = BAD_IMAGE | {"file_name": file, "write": False} | size
    root, ann_file = make_coco([GOOD_IMAGE, record], [coco_ann(1), coco_ann(2, [2, 2, 10, 10], image_id=2)])
    write(root)
    for policy in ("error", "skip"):
        ds = CocoDetection(root, ann_file, EvalTransform(56), masks=True, on_bad_data=policy)
        images = {t["image_id"]: t for t in _load_all(ds)}
        assert set(images) == {1, 2} and not ds.skipped
        assert images[2]["orig_size"] == (record["height"], record["width"])
    dm = CocoDataModule(str(root), str(ann_file), str(root), str(ann_file), image_size=56, num_workers=0)
    report = check_data(dm)
    assert report.errors == 0
    notes = [f for f in report.splits[0].findings if f.severity == "note"]
    assert [(f.kind, Path(f.file).name, f.record) for f in notes] == [(NOTE_KINDS[name], file, "image id 2")]
    assert report.splits[0].samples == 2


def test_a_palette_note_speaks_of_compositing_only_for_a_palette_with_transparency(tmp_path: Path) -> None:
    Image.new("P", (20, 20)).save(tmp_path / "plain.png")
    Image.new("P", (20, 20)).save(tmp_path / "transparent.png", transparency=0)
    ((kind, plain),) = image_conversions(tmp_path / "plain.png")
    ((_, transparent),) = image_conversions(tmp_path / "transparent.png")
    assert kind == "mode_palette" and "black" not in plain and "composited over black" in transparent


def test_exif_ignored_when_annotations_match_the_stored_pixels(make_coco: MakeCoco) -> None:
    record = BAD_IMAGE | {"file_name": "b.jpg", "write": False}  # 28 x 56: the stored pixels
    root, ann_file = make_coco([GOOD_IMAGE, record], [coco_ann(1), coco_ann(2, [30, 2, 20, 10], image_id=2)])
    _exif_rotated(root)
    dm = CocoDataModule(str(root), str(ann_file), str(root), str(ann_file), image_size=56, num_workers=0)
    (note,) = [f for f in check_data(dm).splits[0].findings if f.kind == "exif_rotation"]
    assert "ignored" in note.message


def test_polygon_part_with_two_points_is_dropped_with_a_note(make_coco: MakeCoco) -> None:
    seg = [[2, 2, 10, 2, 10, 8, 2, 8], [1, 1, 3, 3]]
    root, ann_file = make_coco([GOOD_IMAGE], [coco_ann(1, segmentation=seg)])
    ds = CocoDetection(root, ann_file, EvalTransform(56), masks=True, on_bad_data="error")
    assert ds[0][1]["masks"].shape[0] == 1 and not ds.skipped
    assert [(f.kind, f.record, f.severity) for f in ds.findings] == [
        ("polygon_part_dropped", "annotation id 1", "note")
    ]


# Ground truth that COCOeval scores: bad records of an evaluation split, with what pycocotools does with each.
EVALUATION_CASES = {
    "empty_segmentation": (coco_ann(2, segmentation=[]), "degenerate_polygon"),
    "null_segmentation": (coco_ann(2, segmentation=None), "malformed_segmentation"),
    "no_segmentation": (
        {k: v for k, v in coco_ann(2).items() if k != "segmentation"},
        "malformed_segmentation",
    ),
    "unreadable_first_part": (coco_ann(2, segmentation=[[1, 1]]), "degenerate_polygon"),
    "four_numbers": (coco_ann(2, segmentation=[[20, 10, 10, 10]]), "degenerate_polygon"),  # pycocotools fails
    # pycocotools decodes any string: this one to an area of 4e9 pixels.
    "garbage_rle": (
        coco_ann(2, iscrowd=1, segmentation={"size": [28, 56], "counts": "!!!garbage"}),
        "malformed_segmentation",
    ),
    "crowd_without_box": (coco_ann(2, iscrowd=1, bbox=None) | {"bbox": None}, "malformed_box"),
    "iscrowd_not_0_or_1": (coco_ann(2, iscrowd="yes"), "malformed_annotation"),
    # Mask AP would score a 0-1-unit polygon as a 1-pixel mask: near 0, with no word of why.
    "normalised_polygon": (
        coco_ann(2, bbox=[20, 5, 20, 12], segmentation=[[0.36, 0.18, 0.71, 0.18, 0.71, 0.61, 0.36, 0.61]]),
        "segmentation_box_mismatch",
    ),
}


def _score(dataset: CocoDetection, iou_types: tuple[str, ...]) -> dict[str, float]:
    """COCOeval on the dataset's ground truth, detecting annotation 1's box and square exactly."""
    evaluator = CocoEvaluator(iou_types)
    mask = torch.zeros(1, 28, 56, dtype=torch.bool)
    mask[0, 2:8, 2:10] = True
    detection = {"boxes": torch.tensor([[2.0, 2.0, 10.0, 8.0]]), "labels": torch.tensor([1])}
    evaluator.update(1, detection | {"scores": torch.tensor([0.9]), "masks": mask}, dataset.category_ids)
    return evaluator.compute(dataset.coco)


@pytest.mark.parametrize("name", list(EVALUATION_CASES))
def test_evaluation_ground_truth_is_checked_as_cocoeval_reads_it(make_coco: MakeCoco, name: str) -> None:
    """Found at construction, not at the first validation hours into a run; under skip the record also
    leaves the ground truth, so scoring runs."""
    bad, kind = EVALUATION_CASES[name]
    root, ann_file = make_coco([GOOD_IMAGE], [coco_ann(1, area=48), bad | {"area": 48}])
    with pytest.raises(BadDataError, match="annotation id 2") as info:
        CocoDetection(root, ann_file, EvalTransform(56), evaluation="segm", on_bad_data="error")
    assert info.value.finding.kind == kind
    ds = CocoDetection(root, ann_file, EvalTransform(56), evaluation="segm", on_bad_data="skip")
    assert ds.skipped == {kind: 1} and len(ds.coco.getAnnIds()) == 1
    scores = _score(ds, ("bbox", "segm"))
    assert scores["bbox_AP"] > 0.99 and scores["segm_AP"] > 0.99
    dm = CocoDataModule(str(root), str(ann_file), str(root), str(ann_file), image_size=56, num_workers=0)
    train, val = check_data(dm).splits
    assert val.counts() == {kind: 1} and val.findings[0].record == "annotation id 2"


def test_annotation_id_0_is_scored_as_a_match(make_coco: MakeCoco) -> None:
    """COCOeval stores a match as the matched ground truth's id, so id 0 read as no match (labelme starts
    its annotation ids at 0): perfect detections scored AP 0.5 here before."""
    anns = [coco_ann(0, bbox=[2, 2, 8, 6], area=48), coco_ann(1, bbox=[30, 10, 12, 12], area=144)]
    root, ann_file = make_coco([GOOD_IMAGE], anns)
    ds = CocoDetection(root, ann_file, EvalTransform(56), evaluation="bbox")
    assert 0 not in ds.coco.anns and len(ds.coco.anns) == 2
    evaluator = CocoEvaluator(("bbox",))
    boxes = torch.tensor([[2.0, 2.0, 10.0, 8.0], [30.0, 10.0, 42.0, 22.0]])
    evaluator.update(
        1, {"boxes": boxes, "labels": torch.tensor([1, 1]), "scores": torch.tensor([0.9, 0.8])}, [1, 2]
    )
    assert evaluator.compute(ds.coco)["bbox_AP"] > 0.99


def test_evaluation_fills_missing_area_and_iscrowd_and_reads_segmentations_as_pycocotools_does(
    make_coco: MakeCoco,
) -> None:
    no_area = {k: v for k, v in coco_ann(1).items() if k not in ("area", "iscrowd")}
    short_second = [[20, 10, 30, 10, 30, 20, 20, 20], [1, 1, 3, 3]]  # pycocotools reads it: kept as it is
    as_read = coco_ann(2, bbox=[20, 10, 10, 10], segmentation=short_second, area=100)
    two_parts = coco_ann(
        3, bbox=[40, 2, 8, 8], segmentation=[[40, 2], [40, 2, 48, 2, 48, 10, 40, 10]], area=64
    )
    root, ann_file = make_coco([GOOD_IMAGE], [no_area, as_read, two_parts])
    ds = CocoDetection(root, ann_file, EvalTransform(56), evaluation="segm", on_bad_data="error")
    notes = {(f.kind, f.record) for f in ds.findings}
    assert notes == {
        ("iscrowd_missing", "annotation id 1"),
        ("area_missing", "annotation id 1"),
        ("polygon_part_dropped", "annotation id 3"),
    }
    area, iscrowd = ds.coco.anns[1]["area"], ds.coco.anns[1]["iscrowd"]
    assert (area, iscrowd) == (48.0, 0)  # the 8 x 6 square's pixels, as COCO's own areas
    assert ds.coco.anns[2]["segmentation"] == short_second
    assert ds.coco.anns[3]["segmentation"] == [[40, 2, 48, 2, 48, 10, 40, 10]]
    assert _score(ds, ("bbox", "segm"))["segm_AP"] > 0.3
    # Box AP reads no segmentation: an unreadable one is no error, and the area is the box's.
    no_mask = {k: v for k, v in coco_ann(1, segmentation=[]).items() if k != "area"}
    root, ann_file = make_coco([GOOD_IMAGE], [no_mask])
    ds = CocoDetection(root, ann_file, EvalTransform(56), evaluation="bbox", on_bad_data="error")
    assert ds.coco.anns[1]["area"] == 48.0 and _score(ds, ("bbox",))["bbox_AP"] > 0.99
    garbage = {"size": [28, 56], "counts": "!!!garbage"}
    root, ann_file = make_coco(
        [GOOD_IMAGE], [{k: v for k, v in coco_ann(1, segmentation=garbage).items() if k != "area"}]
    )
    ds = CocoDetection(root, ann_file, EvalTransform(56), evaluation="bbox", on_bad_data="error")
    assert ds.coco.anns[1]["area"] == 48.0, "the box's area, not the 4e9 pixels pycocotools decodes"


# ----------------------------------------------------------------------------------------------------
# Hostile input beyond one record
# ----------------------------------------------------------------------------------------------------

# Builds the data the way check-data and fit do, under a memory cap of what the process holds after its
# imports plus 2 GiB: pycocotools asks ~20 GB to rasterise a vertex at 1e9, and a failed allocation in its C
# code ends the process (exit 139) rather than raising.
_UNDER_A_MEMORY_CAP = """
import resource, sys
from vitdense.datamodules import CocoDataModule, check_data
with open("/proc/self/status") as status:
    held = next(int(line.split()[1]) for line in status if line.startswith("VmSize:")) * 1024
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
cap = held + (2 << 30)
resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
root, annotations = sys.argv[1], sys.argv[2]
options = dict(image_size=56, num_workers=0, on_bad_data="skip")
print(check_data(CocoDataModule(root, annotations, root, annotations, **options)).format())
fit = CocoDataModule(root, annotations, root, annotations, **options)
fit.setup("fit")
samples = [fit.train_dataset[i] for i in range(len(fit.train_dataset))]
print("trained on", [target["image_id"] for _, target in samples], dict(fit.train_dataset.skipped))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="the memory cap reads /proc")
def test_a_vertex_at_1e9_leaves_the_process_alive_and_named(make_coco: MakeCoco) -> None:
    crowd = coco_ann(
        78, iscrowd=1, segmentation=[[2, 2, 10, 2, 1e9, 8, 2, 8]]
    )  # evaluation reads crowd regions
    root, ann_file = make_coco(
        [GOOD_IMAGE], [coco_ann(1), coco_ann(77, segmentation=[[2, 2, 1e9, 2, 10, 8]]), crowd]
    )
    done = subprocess.run(
        [sys.executable, "-c", _UNDER_A_MEMORY_CAP, str(root), str(ann_file)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report, trained = done.stdout.split("trained on")
    for record in ("annotation id 77 (image id 1)", "annotation id 78 (image id 1)"):
        found = f"{FAR}: {ann_file}: {record} has a bad segmentation: a polygon reaches 1e+09"
        assert found in report
    assert "[1] {'coordinates_far_outside': 1}" in trained, "training keeps the image, without the annotation"


def test_far_coordinates_never_reach_pycocotools(
    make_coco: MakeCoco, monkeypatch: pytest.MonkeyPatch
) -> None:
    rasterised: list[float] = []
    real = mask_utils.frPyObjects

    def recording(obj: Any, h: int, w: int) -> Any:
        if isinstance(obj, list):
            rasterised.extend(abs(v) for part in obj for v in (part if isinstance(part, list) else []))
        return real(obj, h, w)

    monkeypatch.setattr(mask_utils, "frPyObjects", recording)  # what pycocotools' COCO.annToRLE calls too
    far = [[2, 2, 10, 2, 10, 8, 2, 8], [2, 2, 5e4, 8]]  # its 4-number part pycocotools reads as a box
    root, ann_file = make_coco(
        [GOOD_IMAGE], [coco_ann(1), coco_ann(77, segmentation=far), coco_ann(78, iscrowd=1, segmentation=far)]
    )
    for policy in ("error", "skip"):
        for evaluation, masks in ((None, True), ("segm", False)):
            try:
                ds = CocoDetection(
                    root, ann_file, EvalTransform(56), masks=masks, evaluation=evaluation, on_bad_data=policy
                )
                _load_all(ds)
            except BadDataError as error:
                assert policy == "error" and error.finding.kind == "coordinates_far_outside"
    assert rasterised and max(rasterised) <= 56


def test_image_records_sharing_a_file_are_both_named(make_coco: MakeCoco) -> None:
    """Before, the one image was trained on and scored twice, each time with half its annotations."""
    shared = [BAD_IMAGE, BAD_IMAGE | {"id": 3, "file_name": "./b.png", "write": False}]
    root, ann_file = make_coco(
        [GOOD_IMAGE, *shared], [coco_ann(1), coco_ann(2, image_id=2), coco_ann(3, [30, 10, 8, 8], image_id=3)]
    )
    also = r"b.png \(image id 2, .*\) is also the file of image id 3 \('./b.png'\)"
    with pytest.raises(BadDataError, match=also):
        CocoDetection(root, ann_file, EvalTransform(56), on_bad_data="error")
    ds = CocoDetection(root, ann_file, EvalTransform(56), on_bad_data="skip")
    assert ds.image_ids == [1] and ds.skipped == {"duplicate_file": 2}
    assert [f.record for f in ds.findings] == ["image id 2", "image id 3"]
    dm = CocoDataModule(str(root), str(ann_file), str(root), str(ann_file), image_size=56, num_workers=0)
    assert check_data(dm).counts() == {"train": {"duplicate_file": 2}, "val": {"duplicate_file": 2}}


def test_an_image_outside_the_folder_is_read_only_when_allowed(make_coco: MakeCoco, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere" / "b.png"
    elsewhere.parent.mkdir()
    _save_noise(elsewhere)
    record = BAD_IMAGE | {"file_name": str(elsewhere), "write": False}
    root, ann_file = make_coco([GOOD_IMAGE, record], [coco_ann(1), coco_ann(2, image_id=2)])
    with pytest.raises(BadDataError, match=r"lies outside the images folder .*allow_outside_images=true"):
        CocoDetection(root, ann_file, EvalTransform(56), on_bad_data="error")
    allowed = CocoDetection(root, ann_file, EvalTransform(56), allow_outside_images=True)
    assert [t["image_id"] for t in _load_all(allowed)] == [1, 2]
    (root / "link.png").symlink_to(elsewhere)  # a link inside the folder may point anywhere
    root, ann_file = make_coco(
        [GOOD_IMAGE, BAD_IMAGE | {"file_name": "link.png", "write": False}], [coco_ann(1)]
    )
    assert CocoDetection(root, ann_file, EvalTransform(56)).image_ids == [1, 2]
    paths = [str(root), str(ann_file)] * 2
    dm = CocoDataModule(*paths, image_size=56, num_workers=0, allow_outside_images=True)
    assert check_data(dm).errors == 0


def test_too_many_objects_on_one_image_name_the_count_not_the_image_file(make_coco: MakeCoco) -> None:
    """100k annotations on one image ended in a MemoryError (a (100000, 1008, 1008) mask array) reported as
    the image file failing to load."""
    crowded = [coco_ann(10 + i, [2 + i, 2, 8, 6], image_id=2) for i in range(3)]
    root, ann_file = make_coco([GOOD_IMAGE, BAD_IMAGE], [coco_ann(1), *crowded])
    with pytest.raises(BadDataError) as info:
        CocoDetection(root, ann_file, TrainTransform(56), masks=True, max_objects_per_image=2)
    message = str(info.value)
    assert message.startswith(f"{ann_file}: image id 2 (")
    assert "has 3 objects, more than max_objects_per_image=2" in message
    assert info.value.finding.file == str(ann_file) and "failed to load" not in message
    ds = CocoDetection(
        root, ann_file, TrainTransform(56), masks=True, max_objects_per_image=2, on_bad_data="skip"
    )
    assert ds.image_ids == [1] and ds.skipped == {"too_many_objects": 1}
    assert CocoDetection(root, ann_file, TrainTransform(56), max_objects_per_image=3).image_ids == [1, 2]
    scored = CocoDetection(root, ann_file, EvalTransform(56), evaluation="bbox", max_objects_per_image=2)
    assert scored.image_ids == [1, 2], "evaluation scores every object"
    paths = [str(root), str(ann_file)] * 2
    dm = CocoDataModule(*paths, image_size=56, num_workers=0, max_objects_per_image=2)
    assert check_data(dm).counts() == {"train": {"too_many_objects": 1}, "val": {}}
    with pytest.raises(ValueError, match="max_objects_per_image=0"):
        CocoDataModule(*paths, image_size=56, max_objects_per_image=0)


def test_an_image_whose_only_annotation_has_a_bad_iscrowd_is_no_negative(make_coco: MakeCoco) -> None:
    root, ann_file = make_coco([GOOD_IMAGE, BAD_IMAGE], [coco_ann(1), coco_ann(2, image_id=2, iscrowd="1")])
    ds = CocoDetection(root, ann_file, TrainTransform(56), on_bad_data="skip", keep_empty_images=True)
    assert ds.image_ids == [1] and ds.skipped == {"malformed_annotation": 1}


def test_a_class_annotated_only_in_validation_is_noted(make_coco: MakeCoco, tmp_path: Path) -> None:
    """Its AP is 0 whatever the model does: said before training, not found in the results."""
    root, train_file = make_coco([GOOD_IMAGE], [coco_ann(1, area=48)])
    val = json.loads(train_file.read_text())
    val["annotations"] += [coco_ann(i, category_id=2, bbox=[10 + 10 * i, 4, 8, 8], area=64) for i in (2, 3)]
    val_file = _write_json(tmp_path / "val.json", json.dumps(val))
    dm = CocoDataModule(str(root), str(train_file), str(root), str(val_file), image_size=56, num_workers=0)
    report = check_data(dm)
    assert report.errors == 0 and report.counts("note") == {"train": {}, "val": {"class_not_in_training": 1}}
    (note,) = report.splits[1].findings
    assert note.record == "category id 2" and note.file == str(val_file)
    assert "('b') has 2 annotation(s) here but none in the training file" in note.message


# ----------------------------------------------------------------------------------------------------
# Segmentation corpus
# ----------------------------------------------------------------------------------------------------


def _pair(images: Path, labels: Path, stem: str, *, h: int = 28, w: int = 42, suffix: str = ".png") -> None:
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    _save_noise(images / f"{stem}{suffix}", h, w)
    label = np.zeros((h, w), np.uint8)
    label[:, w // 2 :] = 1
    label[h // 2 :, :] = 2
    Image.fromarray(label).save(labels / f"{stem}.png")


def _seg_truncated_image(images: Path, labels: Path) -> None:
    _pair(images, labels, "bad", suffix=".jpg")
    _truncate(images / "bad.jpg")


def _seg_garbage_image(images: Path, labels: Path) -> None:
    _pair(images, labels, "bad")
    (images / "bad.png").write_bytes(b"not an image")


def _seg_garbage_label(images: Path, labels: Path) -> None:
    _pair(images, labels, "bad")
    (labels / "bad.png").write_bytes(b"not a PNG")


def _seg_truncated_label(images: Path, labels: Path) -> None:
    _pair(images, labels, "bad")
    Image.fromarray(_noise(28, 42, 1) % 3).save(labels / "bad.png")
    _truncate(labels / "bad.png")


def _seg_missing_label(images: Path, labels: Path) -> None:
    _pair(images, labels, "bad")
    (labels / "bad.png").unlink()


def _seg_missing_image(images: Path, labels: Path) -> None:
    _pair(images, labels, "bad")
    (images / "bad.png").unlink()


def _seg_size_mismatch(images: Path, labels: Path) -> None:
    _pair(images, labels, "bad")
    _save_noise(images / "bad.png", 28, 40)


def _seg_rgb_label(images: Path, labels: Path) -> None:
    _pair(images, labels, "bad")
    Image.fromarray(np.zeros((28, 42, 3), np.uint8)).save(labels / "bad.png")


def _seg_out_of_range(images: Path, labels: Path) -> None:
    _pair(images, labels, "bad")
    Image.fromarray(np.full((28, 42), 7, np.uint8)).save(labels / "bad.png")


def _seg_16_bit_out_of_range(images: Path, labels: Path) -> None:
    _pair(images, labels, "bad")
    Image.fromarray(np.full((28, 42), 3000, np.uint16)).save(labels / "bad.png")  # mode I;16


def _seg_link_loop(images: Path, labels: Path) -> None:
    _pair(images, labels, "bad")
    (images / "bad.png").unlink()
    (images / "bad.png").symlink_to("bad.png")


def _seg_multi_page_tiff(images: Path, labels: Path) -> None:
    _pair(images, labels, "bad")
    (images / "bad.png").unlink()
    _multi_page_tiff(images / "bad.tif")


def _seg_too_small(images: Path, labels: Path) -> None:
    _pair(images, labels, "bad", h=10, w=10)


def _seg_duplicate(images: Path, labels: Path) -> None:
    _pair(images, labels, "bad")
    _save_noise(images / "bad.jpg", 28, 42)


SEG_CASES: dict[str, tuple[Callable[[Path, Path], None], str, str]] = {
    # name: (writer of the bad pair "bad", kind, the file the finding names)
    "truncated_image": (_seg_truncated_image, "corrupt_image", "img/bad.jpg"),
    "garbage_image": (_seg_garbage_image, "corrupt_image", "img/bad.png"),
    "garbage_label": (_seg_garbage_label, "corrupt_label", "lbl/bad.png"),
    "truncated_label": (_seg_truncated_label, "corrupt_label", "lbl/bad.png"),
    "missing_label": (_seg_missing_label, "missing_label", "img/bad.png"),
    "missing_image": (_seg_missing_image, "missing_image", "lbl/bad.png"),
    "size_mismatch": (_seg_size_mismatch, "size_mismatch", "lbl/bad.png"),
    "rgb_label": (_seg_rgb_label, "label_not_indices", "lbl/bad.png"),
    "label_out_of_range": (_seg_out_of_range, "label_out_of_range", "lbl/bad.png"),
    "label_16_bit_out_of_range": (_seg_16_bit_out_of_range, "label_out_of_range", "lbl/bad.png"),
    "image_link_loop": (_seg_link_loop, "corrupt_image", "img/bad.png"),
    "multi_page_tiff": (_seg_multi_page_tiff, "corrupt_image", "img/bad.tif"),
    "image_too_small": (_seg_too_small, "image_too_small", "img/bad.png"),
    "duplicate_image": (_seg_duplicate, "duplicate_image", "lbl/bad.png"),
}


def _seg_case(tmp_path: Path, name: str) -> tuple[Path, Path]:
    images, labels = tmp_path / "img", tmp_path / "lbl"
    _pair(images, labels, "good")
    SEG_CASES[name][0](images, labels)
    return images, labels


def _seg_dataset(images: Path, labels: Path, policy: str) -> SegmentationFolder:
    return SegmentationFolder(
        images, labels, SegmentationEvalTransform((64, 48)), num_classes=3, on_bad_data=policy
    )


@pytest.mark.parametrize("name", list(SEG_CASES))
def test_segmentation_case_raises_naming_file_and_record(tmp_path: Path, name: str) -> None:
    _, kind, file = SEG_CASES[name]
    images, labels = _seg_case(tmp_path, name)
    with pytest.raises(BadDataError) as info:
        _load_all(_seg_dataset(images, labels, "error"))
    assert file in str(info.value) and "on_bad_data='skip'" in str(info.value)
    assert info.value.finding.kind == kind and info.value.finding.record == "bad"


@pytest.mark.parametrize("name", list(SEG_CASES))
def test_segmentation_case_skipped_and_counted(tmp_path: Path, name: str) -> None:
    _, kind, _ = SEG_CASES[name]
    images, labels = _seg_case(tmp_path, name)
    dataset = _seg_dataset(images, labels, "skip")
    targets = _load_all(dataset)
    assert dataset.skipped == {kind: 1}
    assert {Path(t["file_name"]).name for t in targets} == {"good.png"}


@pytest.mark.parametrize("name", list(SEG_CASES))
def test_segmentation_case_reported_by_check_data(tmp_path: Path, name: str) -> None:
    _, kind, file = SEG_CASES[name]
    images, labels = _seg_case(tmp_path, name)
    dm = SegmentationFolderDataModule(
        str(images), str(labels), str(images), str(labels), num_classes=3, crop_size=28, scale=(64, 48),
        num_workers=0,
    )  # fmt: skip
    report = check_data(dm)
    assert [s.split for s in report.splits] == ["train", "val"]
    for split in report.splits:
        assert split.counts() == {kind: 1} and split.samples == 1
        (finding,) = split.findings
        assert finding.file.endswith(file) and finding.record == "bad" and file in finding.message
    assert report.errors == 2 and f"{kind}: " in report.format()


def test_a_label_with_every_pixel_ignored_is_an_error_in_training_a_note_in_evaluation(
    tmp_path: Path,
) -> None:
    """Training had nothing to learn from it (a batch of its crops only: a non-finite loss, named as
    'images [None]'); evaluation scores none of its pixels, which is harmless but worth a word."""
    images, labels = tmp_path / "img", tmp_path / "lbl"
    _pair(images, labels, "good")
    _pair(images, labels, "empty")
    Image.fromarray(np.zeros((28, 42), np.uint8)).save(labels / "empty.png")  # all 0: all 'other'
    train = SegmentationTrainTransform(28, (64, 48), (1.0, 1.0), 1.0, 255)
    strict = SegmentationFolder(images, labels, train, num_classes=3, reduce_zero_label=True)
    with pytest.raises(BadDataError, match=r"empty.png has only the values \{0\}, all mapped to ignore"):
        _load_all(strict)
    lenient = SegmentationFolder(
        images, labels, train, num_classes=3, reduce_zero_label=True, on_bad_data="skip"
    )
    assert len(_load_all(lenient)) == 2 and lenient.skipped == {"label_all_ignored": 1}
    dm = SegmentationFolderDataModule(
        str(images), str(labels), str(images), str(labels), num_classes=3, reduce_zero_label=True,
        crop_size=28, scale=(64, 48), num_workers=0,
    )  # fmt: skip
    train_report, val_report = check_data(dm).splits
    assert train_report.counts() == {"label_all_ignored": 1} and train_report.samples == 1
    (note,) = val_report.findings
    assert (note.kind, note.severity, note.record) == ("label_all_ignored", "note", "empty")
    assert "reduce_zero_label maps 0 to it" in note.message and val_report.samples == 2


def test_segmentation_image_modes_are_notes(tmp_path: Path) -> None:
    images, labels = tmp_path / "img", tmp_path / "lbl"
    _pair(images, labels, "good")
    _pair(images, labels, "gray")
    _write_mode(images, "gray.png", _noise(28, 42, 1))
    dm = SegmentationFolderDataModule(
        str(images), str(labels), str(images), str(labels), num_classes=3, crop_size=28, scale=(64, 48),
        num_workers=0, check_data=True,
    )  # fmt: skip
    dm.setup("fit")
    assert len(dm.train_dataset) == 2 and dm.train_dataset[1][0].shape == (3, 28, 28)
    notes = [(f.kind, f.record) for f in dm.train_dataset.findings]
    assert notes == [("mode_grayscale", "gray")]


def test_segmentation_exif_note_says_what_loading_does(tmp_path: Path) -> None:
    """A label drawn on the stored pixels: loading keeps them, and the note must say so, not 'applied'."""
    images, labels = tmp_path / "img", tmp_path / "lbl"
    _pair(images, labels, "photo", h=28, w=42)
    stored = Image.open(images / "photo.png").convert("RGB")
    exif = stored.getexif()
    exif[0x0112] = 6  # viewers show it rotated: 42 high, 28 wide
    stored.save(images / "photo.jpg", exif=exif.tobytes())
    (images / "photo.png").unlink()
    dataset = SegmentationFolder(images, labels, SegmentationEvalTransform((64, 48)), num_classes=3)
    (note,) = check_datasets({"val": dataset}).splits[0].findings
    assert note.kind == "exif_rotation" and "ignored" in note.message
    assert dataset[0][1]["label"].shape == (28, 42)


# ----------------------------------------------------------------------------------------------------
# The DataModule switch and workers
# ----------------------------------------------------------------------------------------------------


@dataclass
class _Mixed:
    root: Path
    ann_file: Path
    bad: dict[str, str] = field(default_factory=dict)  # kind -> record


def _mixed_set(make_coco: MakeCoco) -> _Mixed:
    """Four bad records of different kinds (one found only by decoding) beside three good images."""
    good = [GOOD_IMAGE | {"id": i, "file_name": f"g{i}.png"} for i in (1, 3, 4)]
    images = [*good, BAD_IMAGE, BAD_IMAGE | {"id": 5, "file_name": "gone.png", "write": False}]
    anns = [
        coco_ann(1),
        coco_ann(3, image_id=3),
        coco_ann(4, image_id=4),
        coco_ann(2, image_id=2),
        coco_ann(77, bbox=[1, 1, 0, 0]),
        coco_ann(78, category_id=9),
    ]
    root, ann_file = make_coco(images, anns)
    _garbage(root)
    bad = {
        "corrupt_image": "image id 2",
        "missing_image": "image id 5",
        "degenerate_box": "annotation id 77",
        "unknown_category": "annotation id 78",
    }
    return _Mixed(root, ann_file, bad)


def _mixed_dm(data: _Mixed, **kwargs: Any) -> CocoDataModule:
    paths = [str(data.root), str(data.ann_file), str(data.root), str(data.ann_file)]
    return CocoDataModule(*paths, image_size=56, num_workers=0, batch_size=2, check_data=True, **kwargs)


def test_strict_policy_fails_before_the_first_step_with_every_finding(make_coco: MakeCoco) -> None:
    data = _mixed_set(make_coco)
    dm = _mixed_dm(data, on_bad_data="error")
    with pytest.raises(BadDataError) as info:
        dm.setup("fit")
    message = str(info.value)
    assert "bad record(s) under on_bad_data='error'" in message
    for kind, record in data.bad.items():
        assert f"{kind}: " in message and record in message
    assert "gone.png" in message and "b.png" in message
    assert dm.train_dataset is None


def test_skip_policy_drops_bad_records_before_training(
    make_coco: MakeCoco, caplog: pytest.LogCaptureFixture
) -> None:
    data = _mixed_set(make_coco)
    dm = _mixed_dm(data, on_bad_data="skip")
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    assert dm.train_dataset.skipped == {kind: 1 for kind in data.bad}
    assert dm.train_dataset.image_ids == [1, 3, 4], "the corrupt image is dropped up front, not replaced"
    assert dm.val_dataset.image_ids == [1, 3, 4]
    assert dm.train_dataset.on_bad_data == "skip"
    assert any("Data check of 2 split(s)" in r.message for r in caplog.records)
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 3, 56, 56) and all(t["image_id"] != 2 for t in targets)
    dm.setup("test")
    assert dm.test_dataset is dm.val_dataset


def test_check_with_workers_finds_the_same(make_coco: MakeCoco) -> None:
    data = _mixed_set(make_coco)
    alone, pooled = check_data(_mixed_dm(data)), check_data(_mixed_dm(data), num_workers=2)
    # 4 in train, 3 in val: COCOeval scores val's zero-area box as written (a note there).
    assert pooled.counts() == alone.counts() and pooled.errors == alone.errors == 7
    assert [f.message for f in pooled.findings] == [f.message for f in alone.findings]


def test_a_split_left_empty_fails_under_skip(make_coco: MakeCoco) -> None:
    root, ann_file = make_coco([BAD_IMAGE], [coco_ann(2, image_id=2)])
    _garbage(root)
    dm = CocoDataModule(
        str(root), str(ann_file), str(root), str(ann_file), image_size=56, num_workers=0,
        on_bad_data="skip", check_data=True,
    )  # fmt: skip
    with pytest.raises(BadDataError, match="no usable sample"):
        dm.setup("fit")


def test_test_split_with_its_own_files_is_checked(make_coco: MakeCoco, tmp_path: Path) -> None:
    data = _mixed_set(make_coco)
    clean = tmp_path / "clean.json"
    content = json.loads(data.ann_file.read_text())
    content["images"] = content["images"][:3]
    content["annotations"] = content["annotations"][:3]
    clean.write_text(json.dumps(content))
    dm = CocoDataModule(
        str(data.root), str(clean), str(data.root), str(clean), str(data.root), str(data.ann_file),
        image_size=56, num_workers=0,
    )  # fmt: skip
    report = check_data(dm)
    assert [(s.split, s.errors) for s in report.splits] == [("train", 0), ("val", 0), ("test", 3)]
    (note,) = [f for f in report.splits[2].findings if f.kind == "degenerate_box"]
    assert note.severity == "note" and "scored as written" in note.message


@pytest.mark.parametrize("cls", [ShapesDataModule, ShapesSegmentationDataModule, ADE20KDataModule])
def test_subclasses_pass_check_data_through(cls: type) -> None:
    # As the CLI reads the signature: ADE20KDataModule declares check_data through **kwargs to its parent.
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls)
    assert parser.get_defaults().check_data is False
    assert parser.parse_args(["--root=data", "--check_data=true"]).check_data is True
    with pytest.raises(ArgumentError, match="check_data"):
        parser.parse_args(["--root=data", "--check_data=3"])


def test_report_caps_notes_but_lists_every_error(make_coco: MakeCoco) -> None:
    images = [GOOD_IMAGE] + [
        GOOD_IMAGE | {"id": i, "file_name": f"g{i}.png", "write": False} for i in (2, 3, 4)
    ]
    root, ann_file = make_coco(
        images, [coco_ann(1), coco_ann(77, bbox=[1, 1, 0, 0]), coco_ann(78, bbox=[1, 1, 0, 0])]
    )
    for i in (2, 3, 4):
        _write_mode(root, f"g{i}.png", _noise(28, 56, 1))
    dm = CocoDataModule(str(root), str(ann_file), str(root), str(ann_file), image_size=56, num_workers=0)
    text = check_data(dm, splits=["train"]).format(max_notes_per_kind=1)
    assert "annotation id 77" in text and "annotation id 78" in text
    assert text.count("mode_grayscale: ") == 2 and "... and 2 more" in text


# ----------------------------------------------------------------------------------------------------
# Errors inside DataLoader workers
# ----------------------------------------------------------------------------------------------------


def test_corrupt_image_in_a_worker_names_the_file(tmp_path: Path) -> None:
    images, labels = _seg_case(tmp_path, "truncated_image")
    dataset = _seg_dataset(images, labels, "error")
    message = first_worker_error(
        DataLoader(dataset, batch_size=1, num_workers=1, collate_fn=collate_segmentation)
    )
    assert "bad.jpg cannot be decoded" in message and "BadDataError" in message


class _FailingTransform(EvalTransform):
    """An evaluation transform that fails on wide images, as a transform bug on odd data would."""

    def __call__(self, image: np.ndarray, *args: Any) -> Any:
        if image.shape[1] > image.shape[0] * 1.5:
            raise RuntimeError("aspect ratio not supported")
        return super().__call__(image, *args)


def test_transform_failure_names_the_file_in_a_worker_and_can_be_skipped(make_coco: MakeCoco) -> None:
    root, ann_file = make_coco(
        [GOOD_IMAGE | {"width": 30}, BAD_IMAGE], [coco_ann(1, bbox=[2, 2, 8, 6]), coco_ann(2, image_id=2)]
    )
    strict = CocoDetection(root, ann_file, _FailingTransform(56))
    message = first_worker_error(
        DataLoader(strict, batch_size=1, num_workers=1, collate_fn=collate_detection)
    )
    assert "b.png (image id 2) failed to load (RuntimeError: aspect ratio not supported)" in message
    lenient = CocoDetection(root, ann_file, _FailingTransform(56), on_bad_data="skip")
    assert [t["image_id"] for t in _load_all(lenient)] == [1, 1]
    assert lenient.skipped == {"load_failed": 1}


def test_a_folder_of_bad_pairs_lists_each_of_them(tmp_path: Path) -> None:
    images, labels = tmp_path / "img", tmp_path / "lbl"
    for stem in ("a", "b"):
        _pair(images, labels, stem)
        Image.fromarray(np.zeros((28, 42, 3), np.uint8)).save(labels / f"{stem}.png")
    with pytest.raises(BadDataError, match="every image/label pair is bad"):
        _seg_dataset(images, labels, "skip")
    dm = SegmentationFolderDataModule(
        str(images), str(labels), str(images), str(labels), num_classes=3, crop_size=28, scale=(64, 48),
        num_workers=0,
    )  # fmt: skip
    train = check_data(dm).splits[0]
    assert train.samples == 0 and [f.record for f in train.findings] == ["a", "b", "the whole split"]
    assert train.findings[-1].kind == "no_samples", "and the error training would stop on"


def test_check_data_needs_split_datasets() -> None:
    with pytest.raises(TypeError, match="cannot be checked"):
        check_data(object())
