"""Property-based tests (hypothesis): COCO parsing, detection and segmentation transforms, collation.

Properties:

* any valid COCO file (category ids any ints, 0 and negatives included, with gaps and unsorted; images
  without annotations; crowd regions; polygon, compressed and uncompressed RLE masks) parses; labels are
  ``1..K`` and map back to exactly the annotated category ids through the evaluator and ``predict_step``;
  evaluation samples have one target per non-crowd annotation;
* after ``TrainTransform`` (any canvas, scale range, flip) boxes lie in the valid region with at least
  1 px sides, boxes / labels / masks stay paired and in step, each mask is non-empty, its tight box is
  the box, and it lies on the image pixels it came from;
* ``EvalTransform`` scales boxes exactly and masks to within 1 px of them;
* after ``SegmentationTrainTransform`` every label pixel lies on the image pixel it came from, values stay
  in ``{0..K-1, ignore}`` and padding is bottom/right;
* collation pads without moving content.

Geometry is checked with images whose colour encodes the source pixel: red is ``16 + k * x`` and green
``16 + k * y``. Bilinear and area resizing reproduce a linear ramp, so each output pixel's colour tells
which source pixel it shows, to within the 8-bit rounding (``_tolerance``); a mask or label pixel must
equal the source value at one of the (at most 2 x 2) candidate pixels.

Pixel contents come from a numpy generator seeded by hypothesis (fast to draw); sizes, counts, ids, boxes
and transform settings are drawn by hypothesis itself, so they shrink. Examples are derandomized (the
same on every run) and no example database is written into the tree.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools import mask as mask_utils

from vitdense.datamodules import (
    CocoDetection,
    EvalTransform,
    SegmentationTrainTransform,
    TrainTransform,
    boxes_from_masks,
    collate_detection,
    collate_segmentation,
)
from vitdense.tasks.coco_evaluator import CocoEvaluator

# Examples take 1-25 ms: 100 per property run in ~15 s on 2 cores. (1500 random examples per property, with
# wider sizes and scale ranges, also passed.)
PROPERTY = settings(max_examples=100, deadline=None, derandomize=True, database=None, print_blob=True)

# COCO ids are JSON integers: 0, negatives and gaps are legal. Kept within int32 so they fit the int64
# tensors of predict_step; small values are drawn often so that 0 and its neighbours occur.
CATEGORY_IDS = st.one_of(st.integers(-3, 12), st.integers(-(2**31), 2**31 - 1))
IMAGE_SIDES = st.integers(1, 112)
# CocoDetection rejects images smaller than one 14 px ViT patch as bad data.
COCO_IMAGE_SIDES = st.integers(14, 112)
SEEDS = st.integers(0, 2**32 - 1)


# ----------------------------------------------------------------------------------------------------
# Coordinate-encoded images
# ----------------------------------------------------------------------------------------------------


def _coord_image(h: int, w: int) -> tuple[np.ndarray, int]:
    """RGB image with red ``16 + k * x``, green ``16 + k * y``, blue 200; returns it and ``k``."""
    k = min(8, (255 - 16) // max(h - 1, w - 1, 1))
    yy, xx = np.mgrid[:h, :w]
    image = np.stack([16 + k * xx, 16 + k * yy, np.full_like(xx, 200)], axis=-1)
    return image.astype(np.uint8), k


def _tolerance(k: int) -> float:
    # 8-bit rounding of the interpolated value (<= 0.7 levels measured) plus OpenCV's 1/32 px position grid.
    return 0.8 / k + 1 / 16


def _source_candidates(channel: np.ndarray, k: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest source index (``0..n-1``) that an encoded ``channel`` value can show.

    Nearest-neighbour sampling of the continuous source coordinate ``s`` picks ``floor(s + 0.5)``; the
    decoded ``s`` is known to within ``_tolerance(k)``.
    """
    t = (channel.astype(np.float64) - 16) / k + 0.5
    tol = _tolerance(k)
    lo = np.clip(np.floor(t - tol), 0, n - 1).astype(np.intp)
    hi = np.clip(np.floor(t + tol), 0, n - 1).astype(np.intp)
    return lo, hi


def _matches_source(values: np.ndarray, source: np.ndarray, rgb: np.ndarray, k: int) -> np.ndarray:
    """Per pixel: does ``values`` (h, w) equal ``source`` at a candidate pixel decoded from ``rgb``?"""
    h, w = source.shape
    x_lo, x_hi = _source_candidates(rgb[..., 0], k, w)
    y_lo, y_hi = _source_candidates(rgb[..., 1], k, h)
    ok = np.zeros(values.shape, bool)
    for ys in (y_lo, y_hi):
        for xs in (x_lo, x_hi):
            ok |= source[ys, xs] == values
    return ok


# ----------------------------------------------------------------------------------------------------
# COCO files
# ----------------------------------------------------------------------------------------------------


def _uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO uncompressed RLE: run lengths of the column-major mask, starting with a (maybe empty) 0 run."""
    flat = mask.reshape(-1, order="F")
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return {"size": list(mask.shape), "counts": ([0] if flat[0] else []) + runs}


@st.composite
def _boxes_in(draw: st.DrawFn, h: int, w: int) -> list[float]:
    """``[x1, y1, x2, y2]`` with ``0 <= x1 < x2 <= w`` (any floats, so also sub-pixel and sub-ulp boxes)."""
    x1 = draw(st.floats(0, w, exclude_max=True))
    x2 = draw(st.floats(x1, w, exclude_min=True))
    y1 = draw(st.floats(0, h, exclude_max=True))
    y2 = draw(st.floats(y1, h, exclude_min=True))
    return [x1, y1, x2, y2]


@st.composite
def coco_sets(draw: st.DrawFn) -> dict[str, Any]:
    """A valid COCO detection file: ``{"coco": the JSON dict, "seed": pixel seed}``.

    Masks are consistent with boxes: a polygon is its box's rectangle, an RLE mask is random pixels
    inside the box's pixel footprint (possibly none: an empty mask is still valid).
    """
    category_ids = draw(st.lists(CATEGORY_IDS, min_size=1, max_size=6, unique=True))
    categories = [
        {"id": cid, "name": f"class {cid}"} if draw(st.booleans()) else {"id": cid} for cid in category_ids
    ]
    seed = draw(SEEDS)
    rng = np.random.default_rng(seed)
    image_ids = draw(st.lists(st.integers(-(10**9), 10**9), min_size=1, max_size=4, unique=True))
    images, annotations = [], []
    for index, image_id in enumerate(image_ids):
        h, w = draw(COCO_IMAGE_SIDES), draw(COCO_IMAGE_SIDES)
        name = draw(st.sampled_from([f"{index}.png", f"sub/{index}.jpg"]))
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
        for _ in range(draw(st.integers(0, 4))):
            x1, y1, x2, y2 = draw(_boxes_in(h, w))
            crowd = draw(st.integers(0, 4)) == 0
            kind = draw(st.sampled_from(["polygon", "rle", "uncompressed_rle"]))
            if kind == "polygon":
                segmentation: Any = [[x1, y1, x2, y1, x2, y2, x1, y2]]
            else:
                mask = np.zeros((h, w), np.uint8)
                r0, r1 = int(np.floor(y1)), max(int(np.ceil(y2)), int(np.floor(y1)) + 1)
                c0, c1 = int(np.floor(x1)), max(int(np.ceil(x2)), int(np.floor(x1)) + 1)
                mask[r0:r1, c0:c1] = rng.integers(0, 2, (r1 - r0, c1 - c0))
                if kind == "rle":
                    counts = mask_utils.encode(np.asfortranarray(mask))["counts"].decode("ascii")
                    segmentation = {"size": [h, w], "counts": counts}
                else:
                    segmentation = _uncompressed_rle(mask)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": draw(st.sampled_from(category_ids)),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": int(crowd),
                    "segmentation": segmentation,
                }
            )
    # A file whose boxes all lie within [0, 1] x [0, 1] holds normalised coordinates and is refused whole.
    assume(
        not annotations
        or max(max(a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]) for a in annotations) > 1
    )
    # Annotations need not be grouped by image.
    order = draw(st.permutations(range(len(annotations))))
    coco = {"images": images, "annotations": [annotations[i] for i in order], "categories": categories}
    return {"coco": coco, "seed": seed}


def _write_coco(folder: Path, coco_set: dict[str, Any]) -> tuple[Path, Path]:
    coco = coco_set["coco"]
    rng = np.random.default_rng(coco_set["seed"])
    root = folder / "images"
    for img in coco["images"]:
        path = root / img["file_name"]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (img["height"], img["width"], 3), dtype=np.uint8)).save(path)
    ann_file = folder / "annotations.json"
    ann_file.write_text(json.dumps(coco))
    return root, ann_file


def _non_crowd(coco: dict[str, Any], image_id: int) -> list[dict[str, Any]]:
    """The non-crowd annotations of an image, in file order (the order of its targets)."""
    return [a for a in coco["annotations"] if a["image_id"] == image_id and not a["iscrowd"]]


# A box narrower than float32 can represent next to x = 10: positive in the file (float64) but zero-width
# once the dataset casts boxes to float32. Albumentations raised on it and the dataset reported the image
# as undecodable.
SUB_ULP_BOX = {
    "coco": {
        "images": [{"id": 7, "file_name": "0.png", "height": 30, "width": 40}],
        "annotations": [
            {
                "id": 1,
                "image_id": 7,
                "category_id": 0,
                "bbox": [10.0, 5.0, 1e-7, 4.0],
                "area": 4e-7,
                "iscrowd": 0,
                "segmentation": [[10.0, 5.0, 10.0000001, 5.0, 10.0000001, 9.0, 10.0, 9.0]],
            },
            {
                "id": 2,
                "image_id": 7,
                "category_id": 3,
                "bbox": [2.0, 2.0, 20.0, 20.0],
                "area": 400.0,
                "iscrowd": 0,
                "segmentation": [[2.0, 2.0, 22.0, 2.0, 22.0, 22.0, 2.0, 22.0]],
            },
        ],
        "categories": [{"id": 3, "name": "b"}, {"id": 0, "name": "a"}],
    },
    "seed": 0,
}


@PROPERTY
@given(coco_set=coco_sets(), masks=st.booleans(), keep_empty=st.booleans(), size=st.integers(28, 128))
def test_any_valid_coco_set_parses_and_round_trips_category_ids(
    coco_set: dict[str, Any], masks: bool, keep_empty: bool, size: int
) -> None:
    from vitdense.tasks.detection import DetectionTask

    coco = coco_set["coco"]
    with tempfile.TemporaryDirectory() as tmp:
        root, ann_file = _write_coco(Path(tmp), coco_set)
        ds = CocoDetection(root, ann_file, EvalTransform(size), masks=masks, keep_empty_images=keep_empty)
        samples = [ds[i] for i in range(len(ds))]

    names = {c["id"]: c.get("name", str(c["id"])) for c in coco["categories"]}
    assert ds.category_ids == sorted(names)
    assert ds.class_names == [names[cid] for cid in ds.category_ids]
    all_ids = [img["id"] for img in coco["images"]]
    crowded = {a["image_id"] for a in coco["annotations"] if a["iscrowd"]}
    # Images without annotations are kept as negatives on request, never those with only crowd regions.
    kept = [iid for iid in all_ids if _non_crowd(coco, iid) or (keep_empty and iid not in crowded)]
    assert ds.image_ids == kept

    k = len(ds.category_ids)
    detections = []
    for (image, target), image_id in zip(samples, ds.image_ids, strict=True):
        expected = _non_crowd(coco, image_id)
        labels = target["labels"]
        assert target["image_id"] == image_id and labels.dtype == torch.int64
        assert len(labels) == len(target["boxes"]) == len(expected)
        assert all(1 <= label <= k for label in labels.tolist())
        assert [ds.category_ids[label - 1] for label in labels.tolist()] == [
            a["category_id"] for a in expected
        ]
        if masks:
            assert target["masks"].shape == (len(expected), size, size)
        # Evaluation boxes are the file's boxes times the exact scale.
        boxes = np.array([a["bbox"] for a in expected], np.float64).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        h, w = target["orig_size"]
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        np.testing.assert_allclose(target["boxes"].numpy() / target["scale"], boxes, rtol=1e-5, atol=1e-4)
        assert image.shape == (3, size, size)
        scores = torch.ones(len(labels))
        detections.append({"boxes": torch.from_numpy(boxes).float(), "labels": labels, "scores": scores})

    # Labels back to category ids: the evaluator's results ...
    evaluator = CocoEvaluator(("bbox",))
    for image_id, detection in zip(ds.image_ids, detections, strict=True):
        evaluator.update(image_id, detection, ds.category_ids)
        expected_ids = [a["category_id"] for a in _non_crowd(coco, image_id)]
        assert evaluator.results[image_id].category_ids.tolist() == expected_ids
    if ds.image_ids:
        # ... which pycocotools scores perfectly for every category whose boxes survive float32.
        evaluator.compute(ds.coco)
        scored = evaluator.per_category_ap["bbox"]
        assert sorted(scored) == ds.category_ids
        for cid in ds.category_ids:
            gts = [a for iid in ds.image_ids for a in _non_crowd(coco, iid) if a["category_id"] == cid]
            if gts and all(min(a["bbox"][2:]) >= 1 for a in gts):
                assert abs(scored[cid] - 1) < 1e-9, (cid, scored)

    # ... and predict_step.
    batch = (torch.stack([image for image, _ in samples]) if samples else None, [t for _, t in samples])
    # detections are already in the original frame: pasting them is the identity
    stand_in = SimpleNamespace(
        category_ids=ds.category_ids, _detect=lambda _: detections, _paste=lambda detection, _: detection
    )
    predictions = DetectionTask.predict_step(stand_in, batch, 0)
    for prediction, image_id in zip(predictions, ds.image_ids, strict=True):
        assert prediction["image_id"] == image_id
        assert prediction["labels"].tolist() == [a["category_id"] for a in _non_crowd(coco, image_id)]


def _check_train_target(target: dict[str, Any], size: int, num_classes: int) -> None:
    """The contract of one ``TrainTransform`` sample (boxes, labels and, when present, masks)."""
    boxes, labels, masks = target["boxes"].numpy(), target["labels"], target.get("masks")
    vh, vw = target["image_size"]
    assert 0 < vh <= size and 0 < vw <= size
    assert boxes.dtype == np.float32 and boxes.shape == (len(labels), 4)
    assert labels.dtype == torch.int64 and all(1 <= label <= num_classes for label in labels.tolist())
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= vw).all() and (boxes[:, 3] <= vh).all()
    assert ((boxes[:, 2] - boxes[:, 0]) >= 1).all() and ((boxes[:, 3] - boxes[:, 1]) >= 1).all()
    if masks is not None:
        masks = masks.numpy()
        assert masks.dtype == np.uint8 and masks.shape == (len(labels), size, size)
        assert masks.any(axis=(1, 2)).all(), "every kept instance has a non-empty mask"
        assert not masks[:, vh:].any() and not masks[:, :, vw:].any()
        np.testing.assert_array_equal(boxes_from_masks(masks), boxes)


@PROPERTY
@given(
    coco_set=coco_sets(),
    masks=st.booleans(),
    size=st.integers(16, 128),
    scales=st.lists(st.floats(0.05, 2.5), min_size=2, max_size=2).map(sorted),
    seed=SEEDS,
)
@example(coco_set=SUB_ULP_BOX, masks=False, size=56, scales=[1.0, 1.0], seed=0)
@example(coco_set=SUB_ULP_BOX, masks=True, size=56, scales=[1.0, 1.0], seed=0)
def test_train_samples_of_any_valid_coco_set_keep_the_target_contract(
    coco_set: dict[str, Any], masks: bool, size: int, scales: list[float], seed: int
) -> None:
    coco = coco_set["coco"]
    transform = TrainTransform(size, min_scale=scales[0], max_scale=scales[1])
    with tempfile.TemporaryDirectory() as tmp:
        root, ann_file = _write_coco(Path(tmp), coco_set)
        ds = CocoDetection(root, ann_file, transform, masks=masks)
        samples = [ds.sample(i, seed=seed) for i in range(len(ds))]
    for image, target in samples:
        assert image.shape == (3, size, size) and image.dtype == torch.uint8
        _check_train_target(target, size, len(ds.category_ids))
        assert (target.get("masks") is not None) == masks
        # The kept instances are a sub-multiset of the image's annotations.
        annotated = [a["category_id"] for a in _non_crowd(coco, target["image_id"])]
        for label in target["labels"].tolist():
            annotated.remove(ds.category_ids[label - 1])


# ----------------------------------------------------------------------------------------------------
# TrainTransform and EvalTransform on generated scenes
# ----------------------------------------------------------------------------------------------------


@st.composite
def instance_scenes(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(masks (N, h, w) uint8, tight boxes (N, 4) float32, unique labels (N,) int64)``; masks may overlap.

    Each mask is a filled rectangle, an ellipse or random pixels inside a random box.
    """
    h, w = draw(IMAGE_SIDES), draw(IMAGE_SIDES)
    n = draw(st.integers(0, 6))
    labels = np.array(draw(st.permutations(range(1, 11)))[:n], np.int64)
    rng = np.random.default_rng(draw(SEEDS))
    masks = np.zeros((n, h, w), np.uint8)
    yy, xx = np.mgrid[:h, :w]
    for mask in masks:
        bh, bw = draw(st.integers(1, h)), draw(st.integers(1, w))
        y, x = draw(st.integers(0, h - bh)), draw(st.integers(0, w - bw))
        kind = draw(st.sampled_from(["rectangle", "ellipse", "pixels"]))
        if kind == "rectangle":
            mask[y : y + bh, x : x + bw] = 1
        elif kind == "ellipse":
            inside = ((yy + 0.5 - y - bh / 2) / (bh / 2)) ** 2 + (
                (xx + 0.5 - x - bw / 2) / (bw / 2)
            ) ** 2 <= 1
            mask[inside] = 1
        else:
            mask[y : y + bh, x : x + bw] = rng.integers(0, 2, (bh, bw))
        mask[y + bh // 2, x + bw // 2] = 1  # never empty
    return masks, boxes_from_masks(masks), labels


LSJ_SETTINGS = {
    "size": st.integers(16, 128),
    "scales": st.lists(st.floats(0.05, 2.5), min_size=2, max_size=2).map(sorted),
    "flip": st.booleans(),
    "seed": SEEDS,
}


@PROPERTY
@given(scene=instance_scenes(), **LSJ_SETTINGS)
def test_lsj_masks_stay_paired_and_on_their_pixels(
    scene: tuple[np.ndarray, np.ndarray, np.ndarray], size: int, scales: list[float], flip: bool, seed: int
) -> None:
    masks, boxes, labels = scene
    h, w = masks.shape[1:]
    image, k = _coord_image(h, w)
    transform = TrainTransform(size, min_scale=scales[0], max_scale=scales[1], flip_prob=float(flip))
    out = transform(image, boxes, labels, masks, seed=seed)
    target = {"boxes": out.boxes, "labels": out.labels, "masks": out.masks, "image_size": out.image_size}
    _check_train_target(target, size, 10)

    vh, vw = out.image_size
    canvas = out.image.permute(1, 2, 0).numpy()
    assert (canvas[:vh, :vw, 2] == 200).all() and not canvas[vh:].any() and not canvas[:, vw:].any()
    # Which instances survive, exactly: those whose mask, mapped onto the canvas, is not empty.
    _, _, params = transform.augment(image, boxes, labels, seed=seed)  # what that call drew
    flipped = masks[:, :, ::-1] if flip else masks
    expected = [transform.jitter.apply_to_mask(np.ascontiguousarray(m), **params) for m in flipped]
    index_of = {label: i for i, label in enumerate(labels.tolist())}
    kept = [index_of[label] for label in out.labels.tolist()]
    assert kept == [i for i in range(len(labels)) if expected[i].any()], "kept in order, none lost"
    for j, i in enumerate(kept):
        out_mask = out.masks[j].numpy()
        np.testing.assert_array_equal(out_mask, expected[i])
        # Independently of the mask code: each canvas pixel shows the source pixel its mask value came from.
        matches = _matches_source(out_mask[:vh, :vw], masks[i], canvas[:vh, :vw], k)
        assert matches.all(), (i, np.argwhere(~matches)[:5])


@st.composite
def float_boxes(draw: st.DrawFn) -> tuple[int, int, np.ndarray]:
    """``(h, w, boxes (N, 4) float32)``: any boxes with ``0 <= x1 < x2 <= w`` in float64 before the cast."""
    h, w = draw(IMAGE_SIDES), draw(IMAGE_SIDES)
    boxes = draw(st.lists(_boxes_in(h, w), max_size=6))
    return h, w, np.array(boxes, np.float32).reshape(-1, 4)


@PROPERTY
@given(scene=float_boxes(), **LSJ_SETTINGS)
# SUB_ULP_BOX as the transform sees it: a zero-width float32 box is dropped, not an albumentations error.
@example(
    scene=(30, 40, np.array([[10, 5, 10, 9], [2, 2, 22, 22]], np.float32)),
    size=56,
    scales=[1, 1],
    flip=False,
    seed=0,
)
def test_lsj_boxes_without_masks_follow_the_sampled_mapping(
    scene: tuple[int, int, np.ndarray], size: int, scales: list[float], flip: bool, seed: int
) -> None:
    h, w, boxes = scene
    labels = np.arange(1, len(boxes) + 1, dtype=np.int64)
    transform = TrainTransform(size, min_scale=scales[0], max_scale=scales[1], flip_prob=float(flip))
    out = transform(np.zeros((h, w, 3), np.uint8), boxes, labels, seed=seed)
    assert out.masks is None
    _check_train_target({"boxes": out.boxes, "labels": out.labels, "image_size": out.image_size}, size, 10)

    _, _, params = transform.augment(np.zeros((h, w, 3), np.uint8), boxes, labels, seed=seed)
    (x0, y0), (vh, vw) = params["offset"], params["valid"]
    mapped = boxes.astype(np.float64)
    if flip:
        mapped[:, [0, 2]] = w - mapped[:, [2, 0]]
    mapped[:, [0, 2]] = (mapped[:, [0, 2]] * params["sx"] - x0).clip(0, vw)
    mapped[:, [1, 3]] = (mapped[:, [1, 3]] * params["sy"] - y0).clip(0, vh)
    sides = np.minimum(mapped[:, 2] - mapped[:, 0], mapped[:, 3] - mapped[:, 1])
    kept = (out.labels.numpy() - 1).tolist()
    assert kept == sorted(kept)
    for i in range(len(boxes)):
        if abs(sides[i] - 1) > 1e-3:  # at exactly 1 px, float rounding decides
            assert (i in kept) == (sides[i] > 1), (i, sides[i])
    np.testing.assert_allclose(out.boxes.numpy(), mapped[kept], atol=1e-3)


@PROPERTY
@given(scene=instance_scenes(), size=st.integers(16, 160))
def test_eval_transform_scales_boxes_exactly_and_masks_within_a_pixel(
    scene: tuple[np.ndarray, np.ndarray, np.ndarray], size: int
) -> None:
    masks, boxes, labels = scene
    h, w = masks.shape[1:]
    image, k = _coord_image(h, w)
    out = EvalTransform(size)(image, boxes, labels, masks)
    scale = size / max(h, w)
    vh, vw = out.image_size
    assert out.scale == scale and (vh, vw) == (max(1, round(h * scale)), max(1, round(w * scale)))
    assert out.labels.tolist() == labels.tolist() and len(out.boxes) == len(out.masks) == len(labels)
    np.testing.assert_allclose(out.boxes.numpy(), boxes * scale, rtol=1e-6)
    # Boxes keep the exact scale (predictions are mapped back by it), so they may pass the rounded valid
    # region by up to half a pixel, never the scaled image.
    b = out.boxes.numpy()
    assert (b >= 0).all() and (b[:, 2] <= w * scale + 1e-4).all() and (b[:, 3] <= h * scale + 1e-4).all()
    out_masks = out.masks.numpy()
    assert not out_masks[:, vh:].any() and not out_masks[:, :, vw:].any()
    canvas = out.image.permute(1, 2, 0).numpy()
    for i, mask in enumerate(out_masks):
        if scale >= 1:
            assert mask.any(), "enlarging never loses a mask"
        if mask.any():  # shrinking can drop thin masks: evaluation keeps them, empty
            tight = boxes_from_masks(mask[None])[0]
            assert (tight[:2] >= b[i, :2] - 1).all() and (tight[2:] <= b[i, 2:] + 1).all(), (tight, b[i])
        assert _matches_source(mask[:vh, :vw], masks[i], canvas[:vh, :vw], k).all()


# ----------------------------------------------------------------------------------------------------
# Segmentation
# ----------------------------------------------------------------------------------------------------


@st.composite
def label_maps(draw: st.DrawFn) -> tuple[np.ndarray, int, int]:
    """``(label (h, w), num_classes, ignore_index)``: blocks of 1-8 px, some ignored, in a random dtype."""
    h, w = draw(IMAGE_SIDES), draw(IMAGE_SIDES)
    dtype = draw(st.sampled_from([np.uint8, np.uint16, np.int32]))
    num_classes = draw(st.integers(1, 150))
    ignore = draw(st.integers(num_classes, {np.uint8: 255, np.uint16: 65535, np.int32: 10**6}[dtype]))
    values = draw(st.lists(st.integers(0, num_classes - 1), min_size=1, max_size=6, unique=True))
    block = draw(st.integers(1, 8))
    rng = np.random.default_rng(draw(SEEDS))
    blocks = rng.choice(values + [ignore], (-(-h // block), -(-w // block)))
    label = np.kron(blocks, np.ones((block, block), np.int64))[:h, :w]
    return label.astype(dtype), num_classes, ignore


@PROPERTY
@given(
    scene=label_maps(),
    crop=st.integers(16, 128),
    long_side=st.integers(16, 256),
    short_side=st.integers(16, 256),
    ratios=st.lists(st.floats(0.25, 2.5), min_size=2, max_size=2).map(sorted),
    cat_max_ratio=st.sampled_from([0.5, 0.75, 1.0]),
    flip_prob=st.sampled_from([0.0, 0.5, 1.0]),
    seed=SEEDS,
)
def test_segmentation_label_stays_on_its_image_pixels(
    scene: tuple[np.ndarray, int, int],
    crop: int,
    long_side: int,
    short_side: int,
    ratios: list[float],
    cat_max_ratio: float,
    flip_prob: float,
    seed: int,
) -> None:
    label, num_classes, ignore = scene
    h, w = label.shape
    image, k = _coord_image(h, w)
    kwargs = {
        "crop_size": crop,
        "scale": (long_side, short_side),
        "ratio_range": tuple(ratios),
        "cat_max_ratio": cat_max_ratio,
        "ignore_index": ignore,
        "flip_prob": flip_prob,
    }
    transform = SegmentationTrainTransform(**kwargs, photometric=False)
    out_image, out_label = transform(image, label, seed=seed)
    assert out_image.shape == (3, crop, crop) and out_image.dtype == torch.uint8
    assert out_label.shape == (crop, crop) and out_label.dtype == torch.int64
    lab = out_label.numpy()
    assert set(np.unique(lab).tolist()) <= {*np.unique(label).tolist(), ignore}
    assert ((lab >= 0) & (lab < num_classes) | (lab == ignore)).all()

    # Content top-left (the resized image, cropped), padding bottom/right: image 0, label ignore_index.
    applied = dict(transform.augment(image, label, seed=seed)["applied_transforms"])  # what that call drew
    new_h, new_w = applied["RandomResizeKeepRatio"]["size_hw"]
    vh, vw = min(crop, new_h), min(crop, new_w)
    canvas = out_image.permute(1, 2, 0).numpy()
    assert (canvas[:vh, :vw, 2] == 200).all() and not canvas[vh:].any() and not canvas[:, vw:].any()
    assert (lab[vh:] == ignore).all() and (lab[:, vw:] == ignore).all()
    matches = _matches_source(lab[:vh, :vw], label.astype(np.int64), canvas[:vh, :vw], k)
    assert matches.all(), np.argwhere(~matches)[:5]

    # The photometric distortion draws after the geometry: the same seed gives the same label.
    _, distorted_label = SegmentationTrainTransform(**kwargs, photometric=True)(image, label, seed=seed)
    assert torch.equal(distorted_label, out_label)


# ----------------------------------------------------------------------------------------------------
# Collation
# ----------------------------------------------------------------------------------------------------


@PROPERTY
@given(
    sizes=st.lists(
        st.tuples(st.integers(1, 120), st.integers(1, 120), st.integers(0, 3)), min_size=1, max_size=4
    ),
    divisibility=st.integers(1, 64),
    seed=SEEDS,
)
def test_collation_pads_bottom_right_without_moving_content(
    sizes: list[tuple[int, int, int]], divisibility: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    batch = []
    for i, (h, w, n) in enumerate(sizes):
        image = torch.from_numpy(rng.integers(1, 256, (3, h, w), dtype=np.uint8))
        masks = torch.from_numpy(rng.integers(0, 2, (n, h, w), dtype=np.uint8))
        batch.append((image, {"image_id": i, "masks": masks}))
    for collate in (collate_detection, collate_segmentation):
        images, targets = collate(batch, size_divisibility=divisibility)
        bh, bw = images.shape[-2:]
        assert bh % divisibility == 0 and bw % divisibility == 0
        assert (
            bh - max(h for h, _, _ in sizes) < divisibility
            and bw - max(w for _, w, _ in sizes) < divisibility
        )
        for (image, target), padded, out_target in zip(batch, images, targets, strict=True):
            h, w = image.shape[-2:]
            assert torch.equal(padded[:, :h, :w], image) and padded.sum() == image.sum()
            assert out_target["image_id"] == target["image_id"]
            out_masks = out_target["masks"]
            if collate is collate_detection:
                assert out_masks.shape == (len(target["masks"]), bh, bw)
                assert torch.equal(out_masks[:, :h, :w], target["masks"])
                assert out_masks.sum() == target["masks"].sum()
            else:
                assert out_masks is target["masks"]
