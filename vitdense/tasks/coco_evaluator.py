"""COCO box and mask AP, computed by pycocotools against the split's own annotation file."""

import contextlib
import io
import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from vitdense.datamodules.instance_masks import encode_masks

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


class CocoEvaluator:
    """Accumulates detections as COCO results and scores them with ``COCOeval``.

    Detections are kept in the original image frame with the dataset's own category ids, so the ground
    truth is the split's annotation file as written: crowd regions, ``area`` ranges and ignore flags behave
    exactly as in the official evaluation (the dataset only fills in what pycocotools cannot do without
    and takes out records skipped as bad; see ``CocoDetection``'s ``evaluation``). Under DDP the results
    of all processes are gathered and de-duplicated by image id (the distributed sampler pads the last
    batch with repeated images).

    Args:
        iou_types: ``"bbox"`` and/or ``"segm"``.
    """

    def __init__(self, iou_types: Sequence[str] = ("bbox",)) -> None:
        for iou_type in iou_types:
            if iou_type not in ("bbox", "segm"):
                raise ValueError(f"Unknown iou_type {iou_type!r}: use 'bbox' or 'segm'")
        self.iou_types = tuple(iou_types)
        self.reset()

    def reset(self) -> None:
        self.results: dict[int, list[dict]] = {}
        self.summaries: dict[str, str] = {}
        # Filled by compute(): per IoU type, the results as scored and the AP of each category id.
        self.scored_results: dict[str, list[dict]] = {}
        self.per_category_ap: dict[str, dict[int, float]] = {}

    def update(self, image_id: int, detection: dict[str, torch.Tensor], category_ids: Sequence[int]) -> None:
        """Add one image's detections.

        Args:
            image_id: COCO image id.
            detection: ``boxes`` float (N, 4) xyxy in original image pixels, ``labels`` int64 (N,) contiguous
                labels 1..K, ``scores`` (N,), and for ``segm`` ``masks`` bool (N, H, W) at original size.
            category_ids: dataset category id of each label, ``category_ids[label - 1]``.
        """
        boxes = detection["boxes"].detach().float().cpu().clone()
        boxes[:, 2:] -= boxes[:, :2]
        scores = detection["scores"].detach().float().cpu().tolist()
        labels = detection["labels"].detach().cpu().tolist()
        rles = None
        if "segm" in self.iou_types:
            rles = encode_masks(detection["masks"].detach())
        results = []
        for index, (box, score, label) in enumerate(zip(boxes.tolist(), scores, labels, strict=True)):
            result = {
                "image_id": image_id,
                "category_id": category_ids[label - 1],
                "bbox": box,
                "score": score,
            }
            if rles is not None:
                rle = rles[index]
                size = [int(side) for side in rle["size"]]  # numpy ints do not serialise to JSON
                result["segmentation"] = {"size": size, "counts": rle["counts"].decode("ascii")}
            results.append(result)
        self.results[image_id] = results

    def gather(self) -> dict[int, list[dict]]:
        """Results of every process, one entry per image."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self.results
        parts: list[dict[int, list[dict]] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, self.results)
        merged: dict[int, list[dict]] = {}
        for part in parts:
            merged.update(part or {})
        return merged

    def compute(self, coco_gt: COCO) -> dict[str, float]:
        """Score the gathered results on the images that were evaluated.

        Returns:
            ``{iou_type}_{stat}`` for stat in AP, AP50, AP75, APs, APm, APl (COCOeval's ``stats[:6]``; -1
            where COCOeval has no ground truth for a range). ``self.summaries`` holds COCOeval's printed
            tables, ``self.scored_results`` the results file of each IoU type (re-scoring it with pycocotools
            gives these numbers) and ``self.per_category_ap`` the AP of each category.
        """
        per_image = self.gather()
        image_ids = sorted(per_image)
        results = [result for image_id in image_ids for result in per_image[image_id]]
        metrics: dict[str, float] = {}
        for iou_type in self.iou_types:
            # As detectron2 does: without the other field, loadRes takes each detection's area from the
            # field under evaluation (box or mask), which decides its small/medium/large range.
            dropped = "segmentation" if iou_type == "bbox" else "bbox"
            scored = [{key: value for key, value in result.items() if key != dropped} for result in results]
            evaluation, summary = evaluate_coco(coco_gt, scored, image_ids, iou_type)
            self.summaries[iou_type] = summary
            self.scored_results[iou_type] = scored
            self.per_category_ap[iou_type] = per_category_ap(evaluation)
            stats = evaluation.stats
            metrics.update({f"{iou_type}_{name}": float(value) for name, value in zip(STAT_NAMES, stats)})
        return metrics


def per_category_ap(evaluation: COCOeval) -> dict[int, float]:
    """AP at IoU 0.50:0.95, all areas, 100 detections, of each category id (NaN without ground truth)."""
    # precision: (IoU thresholds, recall points, categories, area ranges, max detections); -1 = undefined
    precision = evaluation.eval["precision"][:, :, :, 0, -1]
    scores = {}
    for index, category_id in enumerate(evaluation.params.catIds):
        values = precision[:, :, index]
        values = values[values > -1]
        scores[int(category_id)] = float(values.mean()) if values.size else float("nan")
    return scores


def evaluate_coco(
    coco_gt: COCO, results: list[dict], image_ids: Sequence[int], iou_type: str
) -> tuple[COCOeval, str]:
    """Run ``COCOeval`` on results restricted to ``image_ids``; returns it (``.stats``) and its summary."""
    if not image_ids:
        raise ValueError("No image was evaluated")
    with contextlib.redirect_stdout(io.StringIO()):
        if results:
            # loadRes adds fields (area, id, bbox for masks) to the dicts it is given: give it copies.
            coco_dt = coco_gt.loadRes([dict(result) for result in results])
        else:
            # loadRes rejects an empty list; with no detection every AP is 0 where ground truth exists.
            coco_dt = COCO()
            coco_dt.dataset = {
                "images": coco_gt.dataset["images"],
                "categories": coco_gt.dataset["categories"],
            }
            coco_dt.dataset["annotations"] = []
            coco_dt.createIndex()
    evaluator = COCOeval(coco_gt, coco_dt, iou_type)
    evaluator.params.imgIds = list(image_ids)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator, printed.getvalue()


def ap_by_class_name(
    scores: dict[int, float], category_ids: Sequence[int], class_names: Sequence[str]
) -> dict[str, float]:
    """:func:`per_category_ap`'s scores keyed by class name (a category the model has no class for: its id).

    A category the model has no class for and the split no object of (a dropped ``_background_``) has
    nothing to report and is left out; a class without objects in the split stays, as NaN.
    """
    names = dict(zip(category_ids, class_names, strict=True))
    return {
        names.get(category_id, str(category_id)): ap
        for category_id, ap in scores.items()
        if category_id in names or not math.isnan(ap)
    }
