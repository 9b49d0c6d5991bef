"""Tests for vitdense.datamodules.coco: parsing, label mapping, masks, bad data, predict, the DataModule."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torch.utils.data import DataLoader

from tests.helpers import MakeCoco, coco_ann, first_worker_error
from vitdense.datamodules import (
    BadDataError,
    CocoDataModule,
    CocoDetection,
    EvalTransform,
    PredictImages,
    TrainTransform,
    collate_detection,
)
from vitdense.datamodules import coco as coco_module
from vitdense.datamodules import images as images_module

IMG = {"id": 1, "file_name": "sub/dir/a.png", "height": 28, "width": 56}


# --------------------------------------------------------------------------------------------- parsing


def test_crowd_excluded_from_targets_but_kept_in_coco(make_coco: MakeCoco) -> None:
    crowd_rle = mask_utils.encode(np.asfortranarray(np.pad(np.ones((4, 4), np.uint8), ((2, 22), (40, 12)))))
    crowd = {"size": [28, 56], "counts": crowd_rle["counts"].decode()}
    root, ann_file = make_coco(
        [IMG], [coco_ann(1, [2, 3, 10, 6]), coco_ann(2, [40, 2, 4, 4], iscrowd=1, segmentation=crowd)]
    )
    ds = CocoDetection(root, ann_file, TrainTransform(56, min_scale=1.0, max_scale=1.0), masks=True)
    _, target = ds[0]
    assert target["labels"].tolist() == [1]
    assert target["masks"].shape == (1, 56, 56)
    assert {a["id"] for a in ds.coco.loadAnns(ds.coco.getAnnIds(imgIds=[1], iscrowd=None))} == {1, 2}


def test_a_polygon_past_the_border_agrees_with_its_clipped_box(make_coco: MakeCoco) -> None:
    polygon = [[40, 2, 400, 2, 400, 20, 40, 20]]  # runs 344 px past the 56 px wide image
    root, ann_file = make_coco([IMG], [coco_ann(1, [40, 2, 16, 18], segmentation=polygon)])
    ds = CocoDetection(root, ann_file, EvalTransform(56), masks=True)
    assert ds[0][1]["boxes"].tolist() == [[40.0, 2.0, 56.0, 20.0]]


def test_an_image_with_only_crowd_regions_is_no_training_negative(make_coco: MakeCoco) -> None:
    images = [IMG | {"id": i, "file_name": f"{i}.png"} for i in (1, 2, 3)]
    anns = [
        coco_ann(1, [2, 3, 10, 6]),
        coco_ann(2, [40, 2, 4, 4], image_id=2, iscrowd=1),
    ]  # image 3: no annotation
    root, ann_file = make_coco(images, anns)
    train = CocoDetection(root, ann_file, TrainTransform(56, min_scale=1.0, max_scale=1.0), masks=True)
    assert train.image_ids == [1, 3]
    evaluation = CocoDetection(root, ann_file, EvalTransform(56), evaluation="segm")
    assert evaluation.image_ids == [1, 2, 3], "evaluation scores every image, crowd regions included"


def test_crowd_excluded_in_shapes_train_split(shapes: dict[str, Path]) -> None:
    ds = CocoDetection(shapes["train_images"], shapes["train_annotations"], EvalTransform(224), masks=True)
    crowd_images = {a["image_id"] for a in ds.coco.dataset["annotations"] if a["iscrowd"]}
    assert crowd_images, "the shapes set must contain a crowd region"
    for index, image_id in enumerate(ds.image_ids):
        _, target = ds[index]
        non_crowd = [a for a in ds.coco.imgToAnns[image_id] if not a["iscrowd"]]
        assert len(target["labels"]) == len(non_crowd) == len(target["boxes"]) == len(target["masks"])


@pytest.mark.parametrize("keep", [True, False])
def test_keep_empty_images_switch(shapes: dict[str, Path], keep: bool) -> None:
    ds = CocoDetection(
        shapes["train_images"], shapes["train_annotations"], EvalTransform(224), keep_empty_images=keep
    )
    annotated = {a["image_id"] for a in ds.coco.dataset["annotations"] if not a["iscrowd"]}
    all_ids = [img["id"] for img in ds.coco.dataset["images"]]
    assert len(annotated) < len(all_ids)
    assert ds.image_ids == (all_ids if keep else [i for i in all_ids if i in annotated])


def test_category_ids_remapped_both_ways_with_zero_and_gaps(make_coco: MakeCoco) -> None:
    cats = [{"id": 42, "name": "z"}, {"id": 0, "name": "zero"}, {"id": 5, "name": "five"}]
    anns = [
        coco_ann(1, [1, 1, 5, 5], category_id=5),
        coco_ann(2, [10, 1, 5, 5], category_id=0),
        coco_ann(3, [20, 1, 5, 5], category_id=42),
    ]
    root, ann_file = make_coco([IMG], anns, cats)
    dm = CocoDataModule(str(root), str(ann_file), str(root), str(ann_file), image_size=56, num_workers=0)
    assert dm.num_classes == 3
    assert dm.category_ids == [0, 5, 42]
    assert dm.class_names == ["zero", "five", "z"]
    dm.setup("fit")
    _, target = dm.val_dataset[0]
    assert target["labels"].dtype == torch.int64
    assert target["labels"].tolist() == [2, 1, 3]
    assert [dm.category_ids[label - 1] for label in target["labels"].tolist()] == [5, 0, 42]


def _set_up_for_fit(
    make_coco: MakeCoco, caplog: pytest.LogCaptureFixture, categories: list[dict], second_category: int
) -> tuple[CocoDataModule, list[str]]:
    """A data module set up for fit on one image with a box of category 1 and one of ``second_category``,
    and the messages it logged at WARNING and above."""
    annotations = [
        coco_ann(1, [1, 1, 5, 5], category_id=1),
        coco_ann(2, [10, 1, 5, 5], category_id=second_category),
    ]
    root, ann_file = make_coco([IMG], annotations, categories)
    with caplog.at_level(logging.WARNING):
        dm = CocoDataModule(str(root), str(ann_file), str(root), str(ann_file), image_size=56, num_workers=0)
        dm.setup("fit")
    return dm, [record.getMessage() for record in caplog.records]


def test_an_unused_background_category_is_left_out_a_used_one_kept(
    make_coco: MakeCoco, caplog: pytest.LogCaptureFixture
) -> None:
    cats = [{"id": 0, "name": "_background_"}, {"id": 1, "name": "cat"}, {"id": 2, "name": "Background"}]
    dm, warnings = _set_up_for_fit(make_coco, caplog, cats, second_category=2)
    assert dm.category_ids == [1, 2] and dm.class_names == ["cat", "Background"]  # id 2 is annotated
    warned = [message for message in warnings if "names the background" in message]
    assert len(warned) == 1, "said once per command, not once per split"


def test_categories_sharing_a_name_are_warned_of_once(
    make_coco: MakeCoco, caplog: pytest.LogCaptureFixture
) -> None:
    cats = [{"id": 1, "name": "person"}, {"id": 2, "name": "car"}, {"id": 3, "name": "person"}]
    dm, warnings = _set_up_for_fit(make_coco, caplog, cats, second_category=3)
    assert dm.class_names == ["person", "car", "person"]
    warned = [message for message in warnings if "are all named 'person'" in message]
    assert len(warned) == 1 and "category ids [1, 3]" in warned[0]


def test_validation_split_uses_training_label_mapping(make_coco: MakeCoco, tmp_path: Path) -> None:
    root, train_file = make_coco([IMG], [coco_ann(1, [1, 1, 5, 5], category_id=2)])
    val_file = tmp_path / "val.json"
    val = json.loads(train_file.read_text()) | {"categories": [{"id": 2, "name": "b"}]}
    val_file.write_text(json.dumps(val))
    dm = CocoDataModule(str(root), str(train_file), str(root), str(val_file), image_size=56, num_workers=0)
    dm.setup("validate")
    assert dm.val_dataset.category_ids == [1, 2]
    assert dm.val_dataset[0][1]["labels"].tolist() == [2]


def test_evaluation_file_with_other_category_names_fails_at_setup(
    make_coco: MakeCoco, tmp_path: Path
) -> None:
    root, train_file = make_coco([IMG], [coco_ann(1, [1, 1, 5, 5], category_id=2)])
    val_file = tmp_path / "val.json"
    cats = [{"id": 1, "name": "b"}, {"id": 2, "name": "a"}]  # the same ids, swapped names
    val_file.write_text(json.dumps(json.loads(train_file.read_text()) | {"categories": cats}))
    dm = CocoDataModule(str(root), str(train_file), str(root), str(val_file), image_size=56, num_workers=0)
    message = (
        r"val\.json \(the val annotations\) and the training file .*annotations\.json disagree on "
        r"categories: id 1 is 'b' there, 'a' in training; id 2 is 'a' there, 'b' in training; give the val"
    )
    with pytest.raises(BadDataError, match=message):
        dm.setup("validate")
    val_file.write_text(json.dumps(json.loads(train_file.read_text()) | {"categories": [cats[0]]}))
    with pytest.raises(BadDataError, match=r"id 2 \('b' in training\) is annotated but not a category"):
        CocoDataModule(str(root), str(train_file), str(root), str(val_file), image_size=56).setup("test")


@pytest.mark.parametrize("on_bad_data", ["error", "skip"])
@pytest.mark.parametrize("split", ["train", "val"])
def test_a_boxes_only_file_with_masks_on_is_one_error_that_suggests_faster_rcnn(
    make_coco: MakeCoco, tmp_path: Path, on_bad_data: str, split: str
) -> None:
    anns = [coco_ann(1, [1, 1, 5, 5]), coco_ann(2, [10, 1, 5, 5])]
    boxes_only = [{k: v for k, v in ann.items() if k != "segmentation"} for ann in anns]
    root, good_file = make_coco([IMG], anns)
    boxes_file = tmp_path / "boxes.json"
    boxes_file.write_text(json.dumps(json.loads(good_file.read_text()) | {"annotations": boxes_only}))
    files = {"train_annotations": str(good_file), "val_annotations": str(good_file)}
    files[f"{split}_annotations"] = str(boxes_file)
    dm = CocoDataModule(
        str(root), files["train_annotations"], str(root), files["val_annotations"], image_size=56,
        num_workers=0, on_bad_data=on_bad_data,
    )  # fmt: skip
    message = (
        r"boxes\.json: none of its 2 annotations has a 'segmentation', so it holds boxes only .* use the "
        r"Faster R-CNN recipe \(recipes/coco_faster_rcnn\.yaml"
    )
    with pytest.raises(BadDataError, match=message):
        dm.setup("fit")


def test_rle_and_polygon_masks_decode_to_the_right_pixels(make_coco: MakeCoco) -> None:
    rng = np.random.default_rng(0)
    blob_a = np.zeros((28, 56), np.uint8)
    blob_a[5:20, 30:50] = rng.integers(0, 2, (15, 20))
    blob_a[5, 30] = blob_a[19, 49] = 1
    blob_b = np.zeros((28, 56), np.uint8)
    blob_b[10:14, 2:9] = 1
    compressed = mask_utils.encode(np.asfortranarray(blob_a))
    flat = blob_b.reshape(-1, order="F")
    runs = np.diff(np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])).tolist()
    uncompressed = {"size": [28, 56], "counts": ([0] if flat[0] else []) + runs}
    anns = [
        coco_ann(
            1, [30, 5, 20, 15], segmentation={"size": [28, 56], "counts": compressed["counts"].decode()}
        ),
        coco_ann(2, [2, 10, 7, 4], segmentation=uncompressed),
        coco_ann(3, [10.0, 20.0, 12.0, 6.0]),  # polygon: the rectangle x in [10, 22], y in [20, 26]
    ]
    root, ann_file = make_coco([IMG], anns)
    # image_size 56 = the image's long side, so the eval transform is the identity plus padding.
    ds = CocoDetection(root, ann_file, EvalTransform(56), masks=True)
    _, target = ds[0]
    masks = target["masks"].numpy()
    assert target["scale"] == 1.0
    np.testing.assert_array_equal(masks[0, :28], blob_a)
    np.testing.assert_array_equal(masks[1, :28], blob_b)
    assert masks[:, 28:].sum() == 0
    poly = masks[2]
    assert poly[21:25, 11:21].all() and poly[:19].sum() == 0 and poly[27:].sum() == 0
    assert poly[:, :9].sum() == 0 and poly[:, 24:].sum() == 0


def test_sub_folder_file_names_load(shapes: dict[str, Path]) -> None:
    ds = CocoDetection(shapes["train_images"], shapes["train_annotations"], EvalTransform(224))
    assert all("/" in img["file_name"] for img in ds.coco.dataset["images"])
    image, target = ds[0]
    assert image.shape == (3, 224, 224) and image.dtype == torch.uint8
    assert target["orig_size"] == (224, 224) and target["image_id"] == ds.image_ids[0]


def test_train_sample_contract(shapes: dict[str, Path]) -> None:
    ds = CocoDetection(shapes["train_images"], shapes["train_annotations"], TrainTransform(112), masks=True)
    for index in range(len(ds)):
        image, target = ds[index]
        assert image.shape == (3, 112, 112) and image.dtype == torch.uint8
        assert target["boxes"].dtype == torch.float32 and target["boxes"].shape[1:] == (4,)
        assert target["masks"].dtype == torch.uint8 and target["masks"].shape[1:] == (112, 112)
        assert set(target) == {"image_id", "boxes", "labels", "masks", "orig_size", "scale", "image_size"}
        labels = target["labels"]
        assert labels.dtype == torch.int64
        assert labels.numel() == 0 or (labels.min() >= 1 and labels.max() <= 4)


# -------------------------------------------------------------------------------------------- bad data

AID = "annotation id 77"
GONE = {"id": 5, "file_name": "gone.png", "height": 28, "width": 56, "write": False}
BAD_CASES = {
    # name: (image records, annotations, reason, strings the error must contain)
    "zero_area_box": ([IMG], [coco_ann(77, [1, 1, 0, 5])], "degenerate_box", [AID, "image id 1"]),
    "negative_box": ([IMG], [coco_ann(77, [1, 1, 5, -2])], "degenerate_box", [AID]),
    "box_outside_image": ([IMG], [coco_ann(77, [57, 2, 10, 5])], "box_outside_image", [AID, "56x28"]),
    "unknown_category": (
        [IMG],
        [coco_ann(77, [1, 1, 5, 5], category_id=99)],
        "unknown_category",
        [AID, "99"],
    ),
    "unknown_image": ([IMG], [coco_ann(77, [1, 1, 5, 5], image_id=999)], "unknown_image", [AID, "999"]),
    "malformed_polygon": (
        [IMG],
        [coco_ann(77, [1, 1, 5, 5], segmentation=[[1, 2, 3, 4]])],
        "degenerate_polygon",
        [AID],
    ),
    "rle_wrong_size": (
        [IMG],
        [coco_ann(77, [1, 1, 5, 5], segmentation={"size": [10, 10], "counts": "abc"})],
        "rle_size_mismatch",
        [AID, "[28, 56]"],
    ),
    "missing_image": (
        [IMG, GONE],
        [coco_ann(77, [1, 1, 5, 5], image_id=5)],
        "missing_image",
        ["gone.png", "image id 5"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_record_raises_naming_file_and_record(make_coco: MakeCoco, case: str) -> None:
    images, anns, _, needles = BAD_CASES[case]
    root, ann_file = make_coco(images, [coco_ann(1, [2, 2, 6, 6]), *anns])
    with pytest.raises(BadDataError) as info:
        CocoDetection(root, ann_file, EvalTransform(56), masks=True, on_bad_data="error")
    message = str(info.value)
    for needle in [*needles, "on_bad_data='skip'"]:
        assert needle in message
    if case != "missing_image":
        assert str(ann_file) in message


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_record_skipped_and_counted(
    make_coco: MakeCoco, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    images, anns, reason, _ = BAD_CASES[case]
    root, ann_file = make_coco(images, [coco_ann(1, [2, 2, 6, 6]), *anns])
    with caplog.at_level(logging.WARNING, logger=coco_module.__name__):
        ds = CocoDetection(root, ann_file, EvalTransform(56), masks=True, on_bad_data="skip")
    assert ds.skipped == {reason: 1}
    assert sum("skipping" in r.message for r in caplog.records) == 1
    assert any("skipped 1 bad records" in r.message for r in caplog.records)
    assert ds.image_ids == [1]
    assert ds[0][1]["labels"].tolist() == [1]  # the good annotation survives


def test_whole_number_sizes_written_as_floats_are_read_as_ints(make_coco: MakeCoco) -> None:
    root, ann_file = make_coco([IMG | {"height": 28.0, "width": 56.0}], [coco_ann(1, [2, 2, 6, 6])])
    ds = CocoDetection(root, ann_file, EvalTransform(56), masks=True, evaluation="segm", on_bad_data="error")
    assert ds[0][1]["masks"].shape[0] == 1
    assert ds.coco.imgs[1]["height"] == 28 and isinstance(ds.coco.imgs[1]["height"], int)
    root, ann_file = make_coco([IMG | {"height": 28.5}], [coco_ann(1, [2, 2, 6, 6])])
    with pytest.raises(BadDataError, match="positive integer 'height'/'width'"):
        CocoDetection(root, ann_file, EvalTransform(56), on_bad_data="error")


def test_box_up_to_one_pixel_outside_is_clipped(make_coco: MakeCoco) -> None:
    root, ann_file = make_coco([IMG], [coco_ann(1, [-0.8, 20.0, 57.5, 8.9])])
    ds = CocoDetection(root, ann_file, EvalTransform(56), on_bad_data="error")
    assert ds[0][1]["boxes"].tolist() == [[0.0, 20.0, 56.0, 28.0]]
    assert not ds.findings


def test_box_partly_outside_is_clipped_with_a_note_as_detectron2_clips(make_coco: MakeCoco) -> None:
    """Dropping an object partly past the border would teach it as background."""
    bbox = [40.0, -6.0, 30.0, 20.0]
    square = [[40.0, 0.0, 56.0, 0.0, 56.0, 14.0, 40.0, 14.0]]  # its mask, as a tool clips it
    root, ann_file = make_coco([IMG], [coco_ann(1, bbox, segmentation=square)])
    ds = CocoDetection(root, ann_file, EvalTransform(56), masks=True, on_bad_data="error")
    image, target = ds[0]
    assert target["boxes"].tolist() == [[40.0, 0.0, 56.0, 14.0]]
    assert target["masks"][0].sum().item() == 16 * 14
    assert [(f.kind, f.severity, f.record) for f in ds.findings] == [
        ("box_clipped", "note", "annotation id 1")
    ]


WIDE = IMG | {"height": 80, "width": 100}


@pytest.mark.parametrize(
    ("anns", "clipped"),
    [
        ([coco_ann(1, [30, 20, 75, 50])], [1]),
        ([coco_ann(1, [30, 20, 75, 50]), coco_ann(2, [5, 5, 10, 10])], [1]),
        ([coco_ann(1, [0, 30, 100, 50], iscrowd=1), coco_ann(2, [10, 15, 95, 30])], [2]),
    ],
    ids=["one_box", "two_boxes", "crowd_and_box"],
)
def test_a_few_xywh_boxes_that_would_fit_as_corners_are_clipped_with_a_note(
    make_coco: MakeCoco, anns: list[dict], clipped: list[int]
) -> None:
    """A few boxes are no evidence of corners [x1, y1, x2, y2]: the file is read as COCO's."""
    root, ann_file = make_coco([WIDE], anns)
    for policy in ("error", "skip"):
        ds = CocoDetection(root, ann_file, EvalTransform(112), on_bad_data=policy)
        assert [(f.kind, f.record) for f in ds.findings] == [
            ("box_clipped", f"annotation id {i}") for i in clipped
        ]


def _images(count: int) -> list[dict]:
    return [WIDE | {"id": i, "file_name": f"{i}.png"} for i in range(1, count + 1)]


def test_a_corner_file_with_one_odd_box_is_refused_under_both_policies(make_coco: MakeCoco) -> None:
    anns = []
    for i in range(100):
        x1, y1 = (50, 40) if i % 3 else (5, 5)  # two in three, read as xywh, run far past the 100 x 80 image
        anns.append(
            coco_ann(i + 1, [x1 + i % 7, y1 + i % 5, x1 + 40 + i % 9, y1 + 30 + i % 11], image_id=i % 10 + 1)
        )
    anns.append(coco_ann(101, [50, 50, 50, 60], image_id=1))  # zero width as corners
    root, ann_file = make_coco(_images(10), anns)
    for policy in ("error", "skip"):
        with pytest.raises(BadDataError, match=r"66 of its 101 boxes .* 100 fit .* x2 - x1") as info:
            CocoDetection(root, ann_file, EvalTransform(112), on_bad_data=policy)
        assert info.value.finding.kind == "corner_boxes"


def test_an_xywh_file_of_large_objects_overshooting_the_border_is_read_as_xywh(make_coco: MakeCoco) -> None:
    """Objects filling their images fit as corners too, and tools drag them 2 px past the right and bottom."""
    anns = [coco_ann(1, [0, 0, 100, 80], iscrowd=1)]
    for i in range(2, 41):
        x, y = 2 + i % 30, 2 + i % 20
        anns.append(coco_ann(i, [x, y, 102 - x, 82 - y], image_id=i % 8 + 1))
    root, ann_file = make_coco(_images(8), anns)
    ds = CocoDetection(root, ann_file, EvalTransform(112), on_bad_data="error")
    assert len(ds) == 8 and {f.kind for f in ds.findings} == {"box_clipped"} and len(ds.findings) == 39


def test_image_whose_annotations_were_all_bad_is_not_a_negative(make_coco: MakeCoco) -> None:
    root, ann_file = make_coco([IMG], [coco_ann(1, [1, 1, 0, 0])])
    ds = CocoDetection(root, ann_file, EvalTransform(56), keep_empty_images=True, on_bad_data="skip")
    assert len(ds) == 0 and ds.skipped["degenerate_box"] == 1


def _corrupt_set(make_coco: MakeCoco) -> tuple[Path, Path, Path]:
    broken = {"id": 2, "file_name": "bad/broken.jpg", "height": 28, "width": 56}
    images = [IMG | {"file_name": "ok.png"}, broken]
    root, ann_file = make_coco(images, [coco_ann(1, [2, 2, 6, 6]), coco_ann(2, [2, 2, 6, 6], image_id=2)])
    bad = root / "bad" / "broken.jpg"
    bad.write_bytes(bad.read_bytes()[:120])  # truncated: the header parses, decoding fails
    return root, ann_file, bad


def test_corrupt_image_in_worker_names_the_file(make_coco: MakeCoco) -> None:
    root, ann_file, _ = _corrupt_set(make_coco)
    ds = CocoDetection(root, ann_file, EvalTransform(56))
    message = first_worker_error(DataLoader(ds, batch_size=1, num_workers=1, collate_fn=collate_detection))
    assert "broken.jpg" in message and "image id 2" in message


def test_corrupt_image_skipped_returns_another_sample(make_coco: MakeCoco) -> None:
    root, ann_file, _ = _corrupt_set(make_coco)
    ds = CocoDetection(root, ann_file, EvalTransform(56), on_bad_data="skip")
    assert ds[1][1]["image_id"] == 1
    assert ds[1][1]["image_id"] == 1
    assert ds.skipped == {"corrupt_image": 1}  # counted once; the bad index is remembered


def test_corrupt_image_skipped_in_evaluation_is_left_out_not_replaced(make_coco: MakeCoco) -> None:
    root, ann_file, _ = _corrupt_set(make_coco)
    ds = CocoDetection(root, ann_file, EvalTransform(56), evaluation="bbox", on_bad_data="skip")
    loader = DataLoader(ds, batch_size=2, collate_fn=collate_detection)
    assert [[t["image_id"] for t in targets] for _, targets in loader] == [[1]], "image 1 is scored once"
    assert ds[1] is None and ds.skipped == {"corrupt_image": 1}
    assert collate_detection([None]) is None, "a batch of skipped images only is None"


def test_size_mismatch_is_bad_data(make_coco: MakeCoco) -> None:
    root, ann_file = make_coco([IMG], [coco_ann(1, [2, 2, 6, 6])])
    Image.new("RGB", (40, 28)).save(root / IMG["file_name"])
    with pytest.raises(BadDataError, match="a.png.*28x40"):
        CocoDetection(root, ann_file, EvalTransform(56))[0]


# ------------------------------------------------------------------------------------ images & predict


def _write_odd_images(folder: Path) -> dict[str, tuple[int, int]]:
    folder.mkdir(parents=True, exist_ok=True)
    rotated = Image.new("RGB", (60, 20), (200, 10, 10))
    exif = rotated.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display: stored 60x20 (w x h), shown 20x60
    rotated.save(folder / "exif.jpg", exif=exif.tobytes())
    Image.fromarray(np.full((30, 50), 77, np.uint8)).save(folder / "gray.png")
    rgba = np.zeros((25, 40, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :20, 3] = 255
    Image.fromarray(rgba).save(folder / "rgba.png")
    Image.fromarray(np.full((35, 45), 65535, np.uint16)).save(folder / "deep.png")
    (folder / "notes.txt").write_text("not an image")
    return {"exif.jpg": (60, 20), "gray.png": (30, 50), "rgba.png": (25, 40), "deep.png": (35, 45)}


def test_predict_folder_loads_all_modes(tmp_path: Path) -> None:
    sizes = _write_odd_images(tmp_path / "imgs")
    ds = PredictImages(str(tmp_path / "imgs"), EvalTransform(56))
    assert sorted(Path(f).name for f in ds.files) == sorted(sizes)
    samples = {Path(t["file_name"]).name: (img, t) for img, t in (ds[i] for i in range(len(ds)))}
    for name, (image, target) in samples.items():
        assert image.shape == (3, 56, 56) and image.dtype == torch.uint8
        assert target["orig_size"] == sizes[name], name
        h, w = sizes[name]
        assert target["scale"] == 56 / max(h, w)
        assert target["image_size"] == (round(h * target["scale"]), round(w * target["scale"]))
    assert samples["gray.png"][0][:, 0, 0].tolist() == [77, 77, 77]
    assert samples["deep.png"][0][:, 0, 0].tolist() == [255, 255, 255]  # 16 bit scaled, not clipped
    rgba = samples["rgba.png"][0]
    assert rgba[:, 0, 0].tolist() == [200, 0, 0] and rgba[:, 0, 40].tolist() == [0, 0, 0]  # alpha over black
    assert [t["image_id"] for _, t in (ds[i] for i in range(len(ds)))] == list(range(len(ds)))


def test_predict_folder_names_images_in_its_sub_folders(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _write_odd_images(tmp_path / "imgs" / "day1")
    message = (
        r"imgs': the folder holds no image file, but its sub-folders hold images too \(e\.g\. .*day1.*\), "
        r"which are not read; .* such as '.*imgs/\*\*/\*'"
    )
    with pytest.raises(ValueError, match=message):
        PredictImages(str(tmp_path / "imgs"), EvalTransform(56))
    Image.new("RGB", (20, 20)).save(tmp_path / "imgs" / "top.png")
    ds = PredictImages(str(tmp_path / "imgs"), EvalTransform(56))
    assert [f.name for f in ds.files] == [
        "top.png"
    ] and "1 image file(s) read, but its sub-folders" in caplog.text
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty': the folder holds no image file \(.*\); check the path"):
        PredictImages(str(tmp_path / "empty"), EvalTransform(56))


def test_16_bit_mid_grey_scales_to_8_bit() -> None:
    image = Image.fromarray(np.full((4, 4), 32896, np.uint16))
    assert images_module.to_rgb_array(image)[0, 0].tolist() == [128, 128, 128]


def test_predict_single_file_and_glob(tmp_path: Path) -> None:
    _write_odd_images(tmp_path / "imgs")
    single = PredictImages(str(tmp_path / "imgs" / "gray.png"), EvalTransform(56))
    assert len(single) == 1 and single[0][1]["orig_size"] == (30, 50)
    globbed = PredictImages(str(tmp_path / "**" / "*.png"), EvalTransform(56))
    assert sorted(Path(f).name for f in globbed.files) == ["deep.png", "gray.png", "rgba.png"]
    everything = PredictImages(str(tmp_path / "**" / "**" / "*"), EvalTransform(56))  # notes.txt passed over
    assert sorted(Path(f).name for f in everything.files) == sorted(
        p.name for p in (tmp_path / "imgs").glob("*.*g")
    )
    with pytest.raises(ValueError, match="no image file matches"):
        PredictImages(str(tmp_path / "nothing*.jpg"), EvalTransform(56))
    with pytest.raises(ValueError, match="nothing.jpg', do not exist; check the path"):
        PredictImages(str(tmp_path / "nothing.jpg"), EvalTransform(56))


def test_exif_orientation_applied_to_pixels(tmp_path: Path) -> None:
    stored = np.zeros((20, 60, 3), np.uint8)
    stored[:, :10] = 255  # white band on the left of the stored pixels
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise: left band goes to the top
    image.save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    rgb = images_module.read_image(tmp_path / "r.jpg")
    assert rgb.shape == (60, 20, 3)
    assert rgb[:8].mean() > 200 and rgb[15:].mean() < 30


# ------------------------------------------------------------------------------------------ DataModule


def test_image_size_must_be_multiple_of_divisibility(shapes: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="use 952 or 1008"):
        CocoDataModule(**{k: str(v) for k, v in shapes.items()}, image_size=1000)


def test_train_annotations_parsed_once(shapes: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = coco_module.load_coco

    def counting(path: str | Path) -> object:
        calls.append(str(path))
        return real(path)

    monkeypatch.setattr(coco_module, "load_coco", counting)
    dm = CocoDataModule(**{k: str(v) for k, v in shapes.items()}, image_size=224, num_workers=0)
    assert dm.num_classes == 4 and dm.category_ids == [1, 3, 7, 8]
    assert dm.class_names == ["circle", "rectangle", "triangle", "diamond"]
    dm.setup("fit")
    assert calls.count(str(shapes["train_annotations"])) == 1


def test_dataloaders_and_test_default_to_val(shapes: dict[str, Path], tmp_path: Path) -> None:
    Image.new("RGB", (30, 20)).save(tmp_path / "p.png")
    dm = CocoDataModule(
        **{k: str(v) for k, v in shapes.items()},
        image_size=112,
        batch_size=3,
        eval_batch_size=2,
        num_workers=0,
        predict_images=str(tmp_path / "p.png"),
    )
    dm.setup(None)
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (3, 3, 112, 112) and images.dtype == torch.uint8 and len(targets) == 3
    assert all("masks" in t for t in targets)
    images, targets = next(iter(dm.val_dataloader()))
    assert images.shape == (2, 3, 112, 112) and all("masks" not in t for t in targets)
    assert dm.test_dataset.image_ids == dm.val_dataset.image_ids
    images, targets = next(iter(dm.predict_dataloader()))
    assert images.shape == (1, 3, 112, 112) and targets[0]["orig_size"] == (20, 30)
    assert not dm.train_dataloader().persistent_workers


@pytest.mark.parametrize(
    ("split", "case"), [("train", "no_annotations"), ("val", "no_annotations"), ("val", "all_bad_skipped")]
)
def test_a_split_without_objects_raises_at_setup(
    make_coco: MakeCoco, shapes: dict[str, Path], split: str, case: str
) -> None:
    """Training would learn background only and AP would be -1, and either run would exit 0."""
    cats = json.loads(shapes["val_annotations"].read_text())["categories"]
    root, ann_file = make_coco(
        [IMG], [] if case == "no_annotations" else [coco_ann(1, [1, 1, 5, 5]) | {"bbox": "x"}], cats
    )
    files = {key: str(value) for key, value in shapes.items()}
    files |= {f"{split}_images": str(root), f"{split}_annotations": str(ann_file)}
    dm = CocoDataModule(**files, image_size=56, num_workers=0, on_bad_data="skip")
    use = "train on" if split == "train" else "score"
    message = f"the {split} split has 1 image\\(s\\) but not one object \\(crowd regions aside\\) to {use}"
    with pytest.raises(BadDataError, match=message) as info:
        dm.setup("fit")
    assert str(ann_file) in str(info.value)
    assert ("malformed_box" in str(info.value)) == (case == "all_bad_skipped")


@pytest.mark.parametrize("case", ["no_images", "all_bad_skipped"])
def test_a_split_without_samples_raises_at_setup(
    make_coco: MakeCoco, shapes: dict[str, Path], case: str
) -> None:
    """Lightning would run no step and exit 0 ("No training batches"): setup must stop instead."""
    cats = json.loads(shapes["val_annotations"].read_text())["categories"]  # the same as validation's
    if case == "no_images":
        root, ann_file = make_coco([], [], cats)
    else:
        root, ann_file = make_coco([IMG], [coco_ann(1, [1, 1, 0, 0])], cats)
    dm = CocoDataModule(
        train_images=str(root),
        train_annotations=str(ann_file),
        val_images=str(shapes["val_images"]),
        val_annotations=str(shapes["val_annotations"]),
        image_size=56,
        num_workers=0,
        on_bad_data="skip",
    )
    with pytest.raises(BadDataError, match="the train split has no usable sample") as info:
        dm.setup("fit")
    assert str(ann_file) in str(info.value)
    assert ("degenerate_box" in str(info.value)) == (case == "all_bad_skipped")


def test_masks_off_gives_box_only_targets(shapes: dict[str, Path]) -> None:
    dm = CocoDataModule(**{k: str(v) for k, v in shapes.items()}, image_size=112, num_workers=0, masks=False)
    dm.setup("fit")
    assert "masks" not in dm.train_dataset[0][1]


def test_workers_draw_different_augmentations(shapes: dict[str, Path]) -> None:
    # albumentations would give every forked worker the same random stream; TrainTransform reseeds.
    # OpenCV used in the parent first: its thread pool would deadlock forked workers (see transforms.py).
    cv2.resize(np.zeros((2000, 2000, 3), np.uint8), (1500, 1500))
    ds = CocoDetection(shapes["train_images"], shapes["train_annotations"], TrainTransform(112))
    one_image = torch.utils.data.Subset(ds, [0] * 8)
    loader = DataLoader(one_image, batch_size=1, num_workers=2, collate_fn=collate_detection)
    scales = [targets[0]["scale"] for _, targets in loader]
    by_worker = scales[0::2], scales[1::2]
    assert by_worker[0] != by_worker[1]


def test_a_box_past_the_border_in_an_evaluation_file_is_noted_as_scored_as_written(
    make_coco: MakeCoco,
) -> None:
    root, ann_file = make_coco([IMG], [coco_ann(1, [40.0, -6.0, 30.0, 20.0])])
    ds = CocoDetection(root, ann_file, EvalTransform(56), evaluation="bbox", on_bad_data="error")
    (finding,) = [f for f in ds.findings if f.kind == "box_clipped"]
    assert finding.message.endswith("COCOeval scores it as written"), finding.message


def test_a_malformed_annotation_is_reported_by_its_wrong_keys_only(make_coco: MakeCoco) -> None:
    polygon = [[float(v) for v in range(2, 200)]]
    bad = [
        coco_ann(7, [2, 2, 6, 6], segmentation=polygon) | {"image_id": "1"},
        {k: v for k, v in coco_ann(8, [2, 2, 6, 6]).items() if k != "category_id"},
    ]
    root, ann_file = make_coco([IMG], [coco_ann(1, [2, 2, 6, 6]), *bad])
    ds = CocoDetection(root, ann_file, EvalTransform(56), on_bad_data="skip")
    messages = [f.message for f in ds.findings if f.kind == "malformed_annotation"]
    assert len(messages) == 2
    assert (
        "annotation id 7 has 'image_id': '1' (str); needs integer 'id', 'image_id' and 'category_id'"
        in messages[0]
    )
    assert "annotation id 8 has no 'category_id'; needs integer" in messages[1]
    assert all("198.0" not in message for message in messages), "the polygon is left out"
