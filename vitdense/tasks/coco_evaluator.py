"""COCO box and mask AP of detections, scored against the split's own annotation file.

Scoring uses faster-coco-eval's ``COCOeval_faster`` by default, pycocotools' ``COCOeval`` with
``backend="pycocotools"``; both give pycocotools' numbers to the last bit (:mod:`vitdense.tasks.coco_scoring`
says how; a test compares both backends on crowd regions, empty images, every size range, ids from 0, tied
scores and more than 100 detections per image). NaN scores, which faster-coco-eval refuses, are scored
last, as pycocotools ranks them. Masks are encoded by :func:`encode_masks`; pycocotools reads their areas.

Detections are kept compactly (arrays and RLE strings per image), gathered to process 0 only and scored there
once; the other processes receive the metrics, the stats and the per-category AP.
"""

import json
import math
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from vitdense.datamodules.instance_masks import encode_masks
from vitdense.tasks.base import strict_json
from vitdense.tasks.coco_scoring import (
    STAT_NAMES,
    Backend,
    ap_by_class_name,
    evaluate_coco,
    per_category_ap,
    summary_text,
)
from vitdense.tasks.detection_store import DetectionStore, ImageResults

# Importable from here as before: the scoring functions and the store live in their own modules.
__all__ = [
    "STAT_NAMES",
    "Backend",
    "CocoEvaluator",
    "DetectionStore",
    "ImageResults",
    "ap_by_class_name",
    "evaluate_coco",
    "per_category_ap",
    "summary_text",
]


@dataclass(frozen=True)
class _Scores:
    """What process 0 scored, sent to the others."""

    metrics: dict[str, float]
    stats: dict[str, list[float]]
    per_category_ap: dict[str, dict[int, float]]


class CocoEvaluator:
    """Accumulates detections as COCO results and scores them with COCOeval (see the module docstring).

    Detections are kept in the original image frame with the dataset's own category ids, so the ground
    truth is the split's annotation file as written: crowd regions, ``area`` ranges and ignore flags behave
    exactly as in the official evaluation (the dataset only fills in what pycocotools cannot do without
    and takes out records skipped as bad; see ``CocoDetection``'s ``evaluation``). Under DDP the results
    are gathered to process 0 and de-duplicated by image id (the distributed sampler pads the last batch
    with repeated images); process 0 scores them and sends the scores to the others.

    Args:
        iou_types: ``"bbox"`` and/or ``"segm"``.
        backend: ``"faster_coco_eval"`` (default) or ``"pycocotools"``, which scores bit for bit as the
            reference implementation, several times slower.
    """

    def __init__(self, iou_types: Sequence[str] = ("bbox",), backend: Backend = "faster_coco_eval") -> None:
        for iou_type in iou_types:
            if iou_type not in ("bbox", "segm"):
                raise ValueError(f"Unknown iou_type {iou_type!r}: use 'bbox' or 'segm'")
        if backend not in ("faster_coco_eval", "pycocotools"):
            raise ValueError(f"Unknown backend {backend!r}: use 'faster_coco_eval' or 'pycocotools'")
        self.iou_types = tuple(iou_types)
        self.backend = backend
        self.reset()

    def reset(self) -> None:
        # This process's detections; after compute(), on process 0 those of every process.
        self.results = DetectionStore()
        # Filled by compute() on every process: per IoU type, COCOeval's 12 stats, its printed summary and
        # the AP of each category id.
        self.stats: dict[str, list[float]] = {}
        self.summaries: dict[str, str] = {}
        self.per_category_ap: dict[str, dict[int, float]] = {}
        self._scored_image_ids: list[int] | None = None

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
        labels = detection["labels"].detach().cpu().numpy()
        masks: dict[str, Any] = {}
        if "segm" in self.iou_types:
            frame = detection["masks"]
            rles = encode_masks(frame.detach())
            masks = {
                "mask_size": (int(frame.shape[-2]), int(frame.shape[-1])),
                "mask_counts": tuple(rle["counts"] for rle in rles),
                "mask_areas": mask_utils.area(rles) if rles else np.zeros(0, np.int64),
            }
        scores = detection["scores"].detach().float().cpu().numpy()
        category_ids = np.asarray(category_ids, np.int64)[labels - 1]
        self.results.add(image_id, ImageResults(boxes.numpy(), scores, category_ids, **masks))

    def compute(self, coco_gt: COCO) -> dict[str, float]:
        """Score the gathered results on the images that were evaluated (on process 0; every process
        returns the same).

        Returns:
            ``{iou_type}_{stat}`` for stat in AP, AP50, AP75, APs, APm, APl (COCOeval's ``stats[:6]``; -1
            where COCOeval has no ground truth for a range). ``self.stats`` holds all 12 stats,
            ``self.summaries`` COCOeval's printed tables and ``self.per_category_ap`` the AP of each category;
            on process 0, :meth:`results_json` writes the results files (re-scoring them gives these numbers).

        Raises:
            ValueError: no image was evaluated (on every process).
        """
        per_image = self._gather()
        outcome: _Scores | Exception | None = None
        if per_image is not None:
            try:
                outcome = self._score(coco_gt, per_image)
            except Exception as error:  # sent to the other processes, raised on every one
                outcome = error
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            sent = [outcome]
            dist.broadcast_object_list(sent, src=0)
            outcome = sent[0]
        if isinstance(outcome, Exception):
            raise outcome
        assert outcome is not None
        self.stats = outcome.stats
        self.per_category_ap = outcome.per_category_ap
        self.summaries = {iou_type: summary_text(stats) for iou_type, stats in outcome.stats.items()}
        return outcome.metrics

    def _gather(self) -> DetectionStore | None:
        """Every process's results, one entry per image, on process 0; None on the others."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self.results
        parts: list[DetectionStore | None] | None = None
        if dist.get_rank() == 0:
            parts = [None] * dist.get_world_size()
        dist.gather_object(self.results, parts, dst=0)
        self.results = DetectionStore()
        if parts is None:
            return None
        self.results, parts[0] = parts[0] or DetectionStore(), None
        for index in range(1, len(parts)):
            part, parts[index] = parts[index], None  # each part freed once merged
            self.results.extend(part or DetectionStore())
        return self.results

    def _score(self, coco_gt: COCO, per_image: DetectionStore) -> _Scores:
        image_ids = per_image.image_ids()
        if not image_ids:
            raise ValueError("No image was evaluated")
        metrics: dict[str, float] = {}
        stats: dict[str, list[float]] = {}
        per_category: dict[str, dict[int, float]] = {}
        for iou_type in self.iou_types:
            detections = _ScoredRecords(self, iou_type, image_ids)
            stats[iou_type], precision, category_ids = evaluate_coco(
                coco_gt, detections, image_ids, iou_type, self.backend
            )
            per_category[iou_type] = per_category_ap(precision, category_ids)
            metrics.update({f"{iou_type}_{name}": value for name, value in zip(STAT_NAMES, stats[iou_type])})
        self._scored_image_ids = image_ids
        return _Scores(metrics, stats, per_category)

    def _records(
        self,
        iou_type: str,
        image_ids: Sequence[int],
        scored: bool = False,
        category_ids: Collection[int] | None = None,
    ) -> Iterator[dict]:
        """The results of ``image_ids`` (of ``category_ids`` only, where given) as COCO result records,
        without the other IoU type's field (as detectron2 writes them: pycocotools' loadRes would take a
        detection's area from its box even for mask AP). ``scored``: with the fields loadRes adds (``id`` from
        1 over all the results, ``iscrowd`` 0 and ``area``: box ``w * h`` or mask pixels), for COCOeval."""
        wanted = None if category_ids is None else set(category_ids)
        number = 0
        for image_id in image_ids:
            detected = self.results.category_ids(image_id)
            if len(detected) == 0:  # the store keeps no mask fields when nothing was detected anywhere
                continue
            numbers: Sequence[int] = range(number + 1, number + len(detected) + 1)
            number += len(detected)
            if wanted is None:
                result = self.results[image_id]
            else:
                chosen = [index for index, category in enumerate(detected.tolist()) if category in wanted]
                if not chosen:
                    continue
                numbers = [numbers[index] for index in chosen]
                result = self.results.get(image_id, chosen)
            categories, scores = result.category_ids.tolist(), result.scores.tolist()
            if iou_type == "bbox":
                fields, areas = result.boxes.tolist(), None
            else:
                assert result.mask_counts is not None and result.mask_areas is not None and result.mask_size
                size = list(result.mask_size)
                fields = [{"size": size, "counts": counts.decode("ascii")} for counts in result.mask_counts]
                areas = result.mask_areas.tolist()
            for index, (field, category, score) in enumerate(zip(fields, categories, scores, strict=True)):
                if iou_type == "bbox":
                    record = {"image_id": image_id, "category_id": category, "bbox": field, "score": score}
                else:
                    record = {"image_id": image_id, "category_id": category, "score": score}
                    record["segmentation"] = field
                if scored:
                    area = field[2] * field[3] if areas is None else areas[index]
                    record.update(id=numbers[index], iscrowd=0, area=area)
                    if math.isnan(score):  # pycocotools ranks it last; faster-coco-eval refuses NaN
                        record["score"] = -math.inf
                yield record

    def results_json(self, iou_type: str) -> str:
        """The ``iou_type`` results file of the last :meth:`compute` (on process 0, which holds every
        process's results): a JSON list of COCO results, one per line, that pycocotools' ``loadRes`` reads
        and scores to ``self.stats``. A non-finite number is written as ``null``.

        Raises:
            RuntimeError: before compute(), or on a process other than 0.
        """
        if self._scored_image_ids is None:
            raise RuntimeError(
                "results_json() needs compute() first, and the results are on process 0 only under DDP"
            )
        lines = []
        for record in self._records(iou_type, self._scored_image_ids):
            try:
                lines.append(json.dumps(record, allow_nan=False))
            except ValueError:  # NaN or infinity, which JSON cannot hold
                lines.append(strict_json(record))
        return "[\n" + ",\n".join(lines) + "\n]\n"


class _ScoredRecords:
    """One IoU type's results of the scored images as ``evaluate_coco`` reads them (``ResultRecords``)."""

    def __init__(self, evaluator: CocoEvaluator, iou_type: str, image_ids: Sequence[int]) -> None:
        self._evaluator = evaluator
        self._iou_type = iou_type
        self._image_ids = image_ids

    def counts(self) -> dict[int, int]:
        return self._evaluator.results.category_counts()

    def records(self, category_ids: Collection[int]) -> Iterator[dict]:
        return self._evaluator._records(
            self._iou_type, self._image_ids, scored=True, category_ids=category_ids
        )
