import contextlib
import io
import json
import math

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from vitdense.tasks.coco_evaluator import CocoEvaluator, ap_by_class_name

CATEGORY_IDS = [3, 7]  # labels 1, 2


def _square(x, y, size):
    return [[x, y, x + size, y, x + size, y + size, x, y + size]]


def _gt() -> COCO:
    images = [
        {"id": 10, "width": 120, "height": 100, "file_name": "a.jpg"},
        {"id": 11, "width": 80, "height": 90, "file_name": "b.jpg"},
    ]
    annotations = []
    boxes = [(10, 10, 30, 3, 10), (60, 20, 40, 7, 10), (5, 50, 20, 3, 11), (40, 40, 35, 7, 11)]
    for index, (x, y, size, category, image) in enumerate(boxes):
        annotations.append(
            {
                "id": index + 1,
                "image_id": image,
                "category_id": category,
                "bbox": [x, y, size, size],
                "area": size * size,
                "iscrowd": 0,
                "segmentation": _square(x, y, size),
            }
        )
    crowd = np.zeros((90, 80), dtype=np.uint8, order="F")
    crowd[0:30, 50:80] = 1
    rle = mask_util.encode(crowd)
    annotations.append(
        {
            "id": 9,
            "image_id": 11,
            "category_id": 3,
            "bbox": [50, 0, 30, 30],
            "area": 900,
            "iscrowd": 1,
            "segmentation": {"size": [90, 80], "counts": rle["counts"].decode()},
        }
    )
    coco = COCO()
    coco.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _detections_from_gt(coco: COCO, image_id: int, jitter: float, rng: np.random.Generator) -> dict:
    info = coco.imgs[image_id]
    anns = [a for a in coco.imgToAnns[image_id] if not a["iscrowd"]]
    boxes, labels, masks = [], [], []
    for ann in anns:
        x, y, w, h = ann["bbox"]
        dx, dy = rng.uniform(-jitter, jitter, 2) * w
        boxes.append([x + dx, y + dy, x + w + dx, y + h + dy])
        labels.append(CATEGORY_IDS.index(ann["category_id"]) + 1)
        mask = np.roll(coco.annToMask(ann), (int(round(dy)), int(round(dx))), axis=(0, 1))
        masks.append(mask)
    scores = rng.uniform(0.3, 1.0, len(anns))
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "masks": torch.from_numpy(np.stack(masks)).bool().reshape(-1, info["height"], info["width"]),
    }


def test_perfect_detections_score_one_and_crowd_detections_are_ignored():
    coco = _gt()
    evaluator = CocoEvaluator(("bbox", "segm"))
    rng = np.random.default_rng(0)
    for image_id in (10, 11):
        detection = _detections_from_gt(coco, image_id, 0.0, rng)
        if image_id == 11:  # a confident detection on the crowd region must not count as a false positive
            crowd_mask = torch.zeros(1, 90, 80, dtype=torch.bool)
            crowd_mask[0, 2:28, 52:78] = True
            detection = {
                "boxes": torch.cat([detection["boxes"], torch.tensor([[52.0, 2.0, 78.0, 28.0]])]),
                "labels": torch.cat([detection["labels"], torch.tensor([1])]),
                "scores": torch.cat([detection["scores"], torch.tensor([0.99])]),
                "masks": torch.cat([detection["masks"], crowd_mask]),
            }
        evaluator.update(image_id, detection, CATEGORY_IDS)
    metrics = evaluator.compute(coco)
    assert metrics["bbox_AP"] == pytest.approx(1.0)
    assert metrics["segm_AP"] == pytest.approx(1.0)
    assert "Average Precision" in evaluator.summaries["bbox"]


def test_metrics_equal_cocoeval_on_the_same_results_json(tmp_path):
    coco = _gt()
    evaluator = CocoEvaluator(("bbox", "segm"))
    rng = np.random.default_rng(1)
    results = []
    for image_id in (10, 11):
        detection = _detections_from_gt(coco, image_id, 0.15, rng)
        evaluator.update(image_id, detection, CATEGORY_IDS)
        # The reference conversion, written independently: xywh boxes, dataset ids, RLE masks.
        for box, label, score, mask in zip(
            detection["boxes"].tolist(),
            detection["labels"].tolist(),
            detection["scores"].tolist(),
            detection["masks"].numpy(),
        ):
            rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            results.append(
                {
                    "image_id": image_id,
                    "category_id": CATEGORY_IDS[label - 1],
                    "score": score,
                    "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                }
            )
    metrics = evaluator.compute(coco)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    for iou_type in ("bbox", "segm"):
        with contextlib.redirect_stdout(io.StringIO()):
            reference = COCOeval(coco, coco.loadRes(str(path)), iou_type)
            reference.evaluate()
            reference.accumulate()
            reference.summarize()
        for index, name in enumerate(["AP", "AP50", "AP75", "APs", "APm", "APl"]):
            assert metrics[f"{iou_type}_{name}"] == pytest.approx(reference.stats[index], abs=1e-12), (
                iou_type,
                name,
            )
    assert 0.0 < metrics["bbox_AP"] < 1.0


def test_no_detection_gives_zero_ap_and_only_evaluated_images_count():
    coco = _gt()
    evaluator = CocoEvaluator(("bbox",))
    empty = {
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.int64),
        "scores": torch.zeros(0),
    }
    evaluator.update(10, empty, CATEGORY_IDS)
    assert evaluator.compute(coco)["bbox_AP"] == 0.0

    evaluator.reset()
    evaluator.update(10, _detections_from_gt(coco, 10, 0.0, np.random.default_rng(0)), CATEGORY_IDS)
    assert evaluator.compute(coco)["bbox_AP"] == pytest.approx(1.0)  # image 11 was not evaluated


def test_unknown_iou_type():
    with pytest.raises(ValueError, match="iou_type"):
        CocoEvaluator(("keypoints",))


def test_per_class_ap_leaves_out_only_categories_without_a_class_and_without_objects():
    # Category 0 (labelme's dropped _background_): no class, no object. Category 9: objects but no class
    # (data of another label set). Class "dog" (id 2): no object in this split, reported as NaN.
    scores = {0: float("nan"), 1: 0.5, 2: float("nan"), 9: 0.25}
    by_name = ap_by_class_name(scores, category_ids=[1, 2], class_names=["cat", "dog"])
    assert list(by_name) == ["cat", "dog", "9"]
    assert by_name["cat"] == 0.5 and math.isnan(by_name["dog"]) and by_name["9"] == 0.25
