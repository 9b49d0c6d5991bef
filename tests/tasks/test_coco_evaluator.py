import contextlib
import io
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from vitdense.tasks import coco_evaluator, coco_scoring
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
            assert metrics[f"{iou_type}_{name}"] == reference.stats[index], (iou_type, name)
        assert evaluator.stats[iou_type] == reference.stats.tolist()
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


def test_masks_without_any_detection_give_zero_ap_and_an_empty_results_file():
    """An untrained model may detect nothing on any image: the mask evaluation still scores (the resume
    tests' first validations)."""
    coco = _gt()
    evaluator = CocoEvaluator(("bbox", "segm"))
    for image_id, (height, width) in ((10, (100, 120)), (11, (90, 80))):
        empty = {
            "boxes": torch.zeros(0, 4),
            "labels": torch.zeros(0, dtype=torch.int64),
            "scores": torch.zeros(0),
            "masks": torch.zeros(0, height, width, dtype=torch.bool),
        }
        evaluator.update(image_id, empty, CATEGORY_IDS)
    metrics = evaluator.compute(coco)
    assert metrics["bbox_AP"] == metrics["segm_AP"] == 0.0
    assert json.loads(evaluator.results_json("segm")) == []


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


def _scene(seed: int, ids_from_zero: bool) -> tuple[COCO, list[int], dict[int, dict[str, torch.Tensor]]]:
    """Random ground truth and detections with every case COCOeval treats apart.

    Images of 40-160 px (small, medium and large objects), some without objects; crowd regions as compressed
    and as uncompressed RLE; image, annotation and category ids from 0 or from 1; a category without
    objects that is still detected; images without detections and images with more than 100; tied scores.
    Detections near objects have the object's mask shifted by their box's offset.
    """
    rng = np.random.default_rng(seed)
    first = 0 if ids_from_zero else 1
    category_ids = [first, first + 1, first + 2, first + 5]  # the last one has no object
    images, annotations = [], []
    for image_id in range(first, first + 5):
        height, width = (int(v) for v in rng.integers(40, 161, 2))
        images.append({"id": image_id, "height": height, "width": width, "file_name": f"{image_id}.jpg"})
        for _ in range(int(rng.integers(0, 7))):
            side = float(rng.choice([rng.uniform(3, 30), rng.uniform(34, 90), rng.uniform(99, 160)]))
            w, h = min(side * rng.uniform(0.7, 1.4), width - 1), min(side * rng.uniform(0.7, 1.4), height - 1)
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            ann = {"id": len(annotations) + first, "image_id": image_id, "iscrowd": 0}
            ann["category_id"] = int(rng.choice(category_ids[:-1]))
            if rng.random() < 0.15:
                mask = np.zeros((height, width), np.uint8, order="F")
                mask[int(y) : int(y + h) + 1, int(x) : int(x + w) + 1] = 1
                rle = mask_util.encode(mask)
                counts = rle["counts"].decode()
                if rng.random() < 0.5:  # uncompressed, as COCO's files store crowd regions
                    flat = mask.ravel("F").astype(np.int64)
                    bounds = np.r_[0, np.flatnonzero(np.diff(flat)) + 1, flat.size]
                    counts = ([0] if flat[0] else []) + np.diff(bounds).tolist()
                ann.update(iscrowd=1, segmentation={"size": [height, width], "counts": counts})
            else:  # an octagon inside the box
                angles = np.arange(8) * np.pi / 4 + rng.uniform(0, np.pi / 4)
                xs, ys = x + w / 2 * (1 + np.cos(angles)), y + h / 2 * (1 + np.sin(angles))
                ann["segmentation"] = [np.stack([xs, ys], 1).ravel().round(2).tolist()]
                rle = mask_util.merge(mask_util.frPyObjects(ann["segmentation"], height, width))
            ann["area"] = float(mask_util.area(rle))
            ann["bbox"] = [float(v) for v in mask_util.toBbox(rle)]
            annotations.append(ann)
    coco = COCO()
    coco.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": f"c{i}"} for i in category_ids],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    detections = {}
    for image in images:
        height, width = image["height"], image["width"]
        if rng.random() < 0.2:  # no detection
            detections[image["id"]] = {
                "boxes": torch.zeros(0, 4),
                "labels": torch.zeros(0, dtype=torch.int64),
                "scores": torch.zeros(0),
                "masks": torch.zeros(0, height, width, dtype=torch.bool),
            }
            continue
        boxes, labels, masks = [], [], []
        for ann in coco.imgToAnns[image["id"]]:
            for _ in range(int(rng.integers(0, 3))):
                x, y, w, h = ann["bbox"]
                dx, dy = (int(v) for v in rng.integers(-3, 4, 2))
                boxes.append([x + dx, y + dy, x + w + dx, y + h + dy])
                same = rng.random() < 0.8
                category = ann["category_id"] if same else int(rng.choice(category_ids))
                labels.append(category_ids.index(category) + 1)
                masks.append(np.roll(coco.annToMask(ann), (dy, dx), axis=(0, 1)))
        for _ in range(int(rng.choice([0, 4, 110]))):
            x0, y0 = rng.uniform(0, width - 2), rng.uniform(0, height - 2)
            x1, y1 = rng.uniform(x0 + 1, width), rng.uniform(y0 + 1, height)
            boxes.append([x0, y0, x1, y1])
            labels.append(int(rng.integers(1, len(category_ids) + 1)))
            mask = np.zeros((height, width), np.uint8)
            mask[int(y0) : int(y1), int(x0) : int(x1)] = 1
            masks.append(mask)
        scores = rng.uniform(0.05, 1.0, len(boxes))
        scores[rng.random(len(boxes)) < 0.3] = 0.5  # ties
        detections[image["id"]] = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "scores": torch.tensor(scores, dtype=torch.float32),
            "masks": torch.from_numpy(np.stack(masks) if masks else np.zeros((0, height, width))).bool(),
        }
    return coco, category_ids, detections


def _pycocotools(coco: COCO, results_file: Path, iou_type: str) -> tuple[COCOeval, str]:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        evaluation = COCOeval(coco, coco.loadRes(str(results_file)), iou_type)
        evaluation.evaluate()
        evaluation.accumulate()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        evaluation.summarize()
    return evaluation, printed.getvalue()


def _same(a: dict[int, float], b: dict[int, float]) -> bool:
    return a.keys() == b.keys() and all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), ids_from_zero=st.booleans())
def test_faster_coco_eval_scores_exactly_as_pycocotools(seed, ids_from_zero, tmp_path_factory):
    """Both backends give pycocotools' 12 stats, per-category AP and printed summary to the last bit, and the
    results file, re-scored by pycocotools, gives them too (faster-coco-eval 1.8.0 alone differs in the
    last bit: it divides by tp + fp, pycocotools by tp + fp + eps)."""
    coco, category_ids, detections = _scene(seed, ids_from_zero)
    backends = ("faster_coco_eval", "pycocotools")
    evaluators = {backend: CocoEvaluator(("bbox", "segm"), backend) for backend in backends}
    for image_id, detection in detections.items():
        for evaluator in evaluators.values():
            evaluator.update(image_id, detection, category_ids)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # faster-coco-eval warns of annotation id 0
        metrics = {backend: evaluator.compute(coco) for backend, evaluator in evaluators.items()}
    faster, reference = evaluators["faster_coco_eval"], evaluators["pycocotools"]
    assert metrics["faster_coco_eval"] == metrics["pycocotools"]
    folder = tmp_path_factory.mktemp("results")
    for iou_type in ("bbox", "segm"):
        assert faster.stats[iou_type] == reference.stats[iou_type]
        assert _same(faster.per_category_ap[iou_type], reference.per_category_ap[iou_type])
        assert faster.summaries[iou_type] == reference.summaries[iou_type]
        text = faster.results_json(iou_type)
        assert text == reference.results_json(iou_type)
        if not json.loads(text):
            continue  # pycocotools' loadRes refuses an empty list
        (folder / f"{iou_type}.json").write_text(text)
        evaluation, printed = _pycocotools(coco, folder / f"{iou_type}.json", iou_type)
        assert faster.stats[iou_type] == evaluation.stats.tolist()
        assert faster.summaries[iou_type] == printed
        assert _same(
            faster.per_category_ap[iou_type],
            coco_evaluator.per_category_ap(evaluation.eval["precision"], evaluation.params.catIds),
        )


def test_a_category_whose_first_detection_alone_matches_keeps_pycocotools_precision():
    """The case where faster-coco-eval's own precision is 1.0 and pycocotools' 1 - 2**-52: a category's best
    detection matches, the next one does not."""
    coco = _gt()
    evaluators = [CocoEvaluator(("bbox",), backend) for backend in ("faster_coco_eval", "pycocotools")]
    for evaluator in evaluators:
        boxes = torch.tensor([[10.0, 10.0, 40.0, 40.0], [0.0, 60.0, 20.0, 80.0]])
        detection = {"boxes": boxes, "labels": torch.tensor([1, 1]), "scores": torch.tensor([0.9, 0.8])}
        evaluator.update(10, detection, CATEGORY_IDS)
        evaluator.compute(coco)
    faster, reference = evaluators
    assert faster.stats == reference.stats and faster.per_category_ap == reference.per_category_ap
    assert reference.per_category_ap["bbox"][3] < 1.0 and faster.per_category_ap["bbox"][3] > 0.99


def test_results_json_is_one_record_per_line_with_non_finite_numbers_as_null():
    coco = _gt()
    evaluator = CocoEvaluator(("bbox",))
    with pytest.raises(RuntimeError, match="compute"):
        evaluator.results_json("bbox")
    boxes = torch.tensor([[10.0, 10.0, 40.0, 40.0], [1.0, 2.0, float("inf"), 5.0]])
    detection = {"boxes": boxes, "labels": torch.tensor([1, 2]), "scores": torch.tensor([0.9, float("nan")])}
    evaluator.update(10, detection, CATEGORY_IDS)
    evaluator.compute(coco)
    lines = evaluator.results_json("bbox").splitlines()
    assert lines[0] == "[" and lines[-1] == "]" and len(lines) == 4
    records = json.loads("\n".join(lines))
    box = [10.0, 10.0, 30.0, 30.0]
    assert records[0] == {"image_id": 10, "category_id": 3, "bbox": box, "score": 0.8999999761581421}
    assert records[1]["score"] is None and records[1]["bbox"][2] is None


def test_nan_scores_rank_last_as_in_pycocotools():
    """faster-coco-eval refuses a NaN score; pycocotools ranks it after every other."""
    coco = _gt()
    boxes = torch.tensor([[10.0, 10.0, 40.0, 40.0], [60.0, 20.0, 100.0, 60.0], [62.0, 22.0, 100.0, 60.0]])
    scores = torch.tensor([float("nan"), 0.3, float("nan")])
    detection = {"boxes": boxes, "labels": torch.tensor([1, 2, 2]), "scores": scores}
    evaluator = CocoEvaluator(("bbox",))
    evaluator.update(10, detection, CATEGORY_IDS)
    evaluator.compute(coco)
    records = [
        {"image_id": 10, "category_id": category, "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score}
        for (x0, y0, x1, y1), category, score in zip(boxes.tolist(), [3, 7, 7], scores.tolist())
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        reference = COCOeval(coco, coco.loadRes(records), "bbox")
        reference.params.imgIds = [10]
        reference.evaluate()
        reference.accumulate()
        reference.summarize()
    assert evaluator.stats["bbox"] == reference.stats.tolist() and reference.stats[0] > 0


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend"):
        CocoEvaluator(("bbox",), backend="detectron2")


def _two_processes(rank: int, folder: str, scene_seed: int) -> None:
    """One of two gloo processes: evaluates its half of the scene (process 1 also the image the sampler
    repeats), counts the scorings it runs, and writes what it got."""
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=2)
    try:
        scored = []
        scoring = coco_evaluator.evaluate_coco
        coco_evaluator.evaluate_coco = lambda *args: scored.append(args[3]) or scoring(*args)
        coco, category_ids, detections = _scene(scene_seed, ids_from_zero=False)
        evaluator = CocoEvaluator(("bbox", "segm"))
        image_ids = sorted(detections)
        for image_id in image_ids[rank::2] + ([image_ids[0]] if rank == 1 else []):
            evaluator.update(image_id, detections[image_id], category_ids)
        metrics = evaluator.compute(coco)
        try:
            results = json.loads(evaluator.results_json("segm"))
        except RuntimeError:
            results = None
        outcome = {"metrics": metrics, "stats": evaluator.stats, "summaries": evaluator.summaries}
        outcome |= {"scored": scored, "kept": len(evaluator.results), "results": results}
        outcome["per_category_ap"] = {t: list(ap.items()) for t, ap in evaluator.per_category_ap.items()}
        evaluator.reset()
        try:
            evaluator.compute(coco)  # nothing evaluated: raised on both processes, neither waits
        except ValueError as error:
            outcome["error"] = str(error)
        Path(folder, f"rank{rank}.json").write_text(json.dumps(outcome))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow(seconds=14)  # each process imports the kit
def test_two_processes_score_once_on_process_0_and_both_get_the_scores(tmp_path):
    processes = mp.spawn(_two_processes, args=(str(tmp_path), 7), nprocs=2, join=False)
    deadline = time.monotonic() + 600
    while not processes.join(timeout=5):
        if time.monotonic() > deadline:  # a process left waiting for the other
            for process in processes.processes:
                process.kill()
            pytest.fail("the two processes did not finish")
    zero, one = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    coco, category_ids, detections = _scene(7, ids_from_zero=False)
    alone = CocoEvaluator(("bbox", "segm"))
    for image_id, detection in detections.items():
        alone.update(image_id, detection, category_ids)
    metrics = alone.compute(coco)
    assert zero["scored"] == ["bbox", "segm"] and one["scored"] == []
    for outcome in (zero, one):
        assert outcome["metrics"] == metrics and outcome["stats"] == alone.stats
        assert outcome["summaries"] == alone.summaries
        assert outcome["error"] == "No image was evaluated"
    assert zero["per_category_ap"] == one["per_category_ap"]
    assert zero["kept"] == len(detections) and one["kept"] == 0  # process 1 sent its results, kept none
    assert zero["results"] == json.loads(alone.results_json("segm")) and one["results"] is None


# Seed 0 makes runs of two categories; seed 5's categories each have more than the limit, scored alone.
@pytest.mark.parametrize(("seed", "joined"), [(0, True), (5, False)])
def test_faster_coco_eval_scores_a_few_categories_at_a_time_as_pycocotools_scores_all(
    seed, joined, monkeypatch
):
    """faster-coco-eval scores runs of categories of at most ``_DETECTIONS_PER_PASS`` detections each (the
    result records of one run exist at a time); joined, they give pycocotools' stats and per-category AP."""
    coco, category_ids, detections = _scene(seed, ids_from_zero=False)
    runs: list[tuple[str, list[int], int]] = []
    make_records = CocoEvaluator._records

    def counted(self, iou_type, image_ids, scored=False, category_ids=None):
        records = list(make_records(self, iou_type, image_ids, scored, category_ids))
        runs.append((iou_type, sorted(category_ids), len(records)))
        return iter(records)

    monkeypatch.setattr(coco_scoring, "_DETECTIONS_PER_PASS", 70)
    evaluators = [CocoEvaluator(("bbox", "segm"), backend) for backend in ("faster_coco_eval", "pycocotools")]
    for image_id, detection in detections.items():
        for evaluator in evaluators:
            evaluator.update(image_id, detection, category_ids)
    faster, reference = evaluators
    reference.compute(coco)
    monkeypatch.setattr(CocoEvaluator, "_records", counted)
    faster.compute(coco)
    for iou_type in ("bbox", "segm"):
        assert faster.stats[iou_type] == reference.stats[iou_type]
        assert _same(faster.per_category_ap[iou_type], reference.per_category_ap[iou_type])
        own = [(group, count) for kind, group, count in runs if kind == iou_type]
        assert len(own) >= 2 and sorted(k for group, _ in own for k in group) == category_ids
        assert all(count <= 70 or len(group) == 1 for group, count in own)
        assert any(len(group) > 1 for group, _ in own) == joined
