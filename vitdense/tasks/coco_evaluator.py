"""COCO box and mask AP of detections, scored against the split's own annotation file.

Scoring uses faster-coco-eval's ``COCOeval_faster`` by default (``backend="pycocotools"``: pycocotools'
``COCOeval``). Its matching and accumulation are detectron2's C++ port of pycocotools' (same rules: IoU
thresholds 0.50:0.95, 101 recall points, areas all / small / medium / large, 1 / 10 / 100 detections, crowd
regions matched as ignored, ground-truth ``area`` for the ranges, stable score order), with mask IoUs on
several threads: at COCO val2017's scale (5k images, 500k detections with masks) a fraction of pycocotools'
time and memory (``benchmarks/README.md``). Its options stay at the defaults that follow pycocotools: no LVIS
rules (``lvis_style``), categories used (``useCats``), the ground truth's ``area`` (``use_area``);
``separate_eval`` only splits the C++ call in two.

It differs in one rounding: a precision is ``tp / (tp + fp)``, pycocotools' ``tp / (tp + fp + eps)``, which
is 1 - 2**-52 instead of 1 after a single match (see :func:`_as_pycocotools_precision`, which puts that back,
so that the reported numbers, the per-category AP and the results files re-scored by pycocotools agree to the
last bit; a test compares both backends on crowd regions, empty images, every size range, ids from 0, tied
scores and more than 100 detections per image). NaN scores, which faster-coco-eval refuses, are scored
last, as pycocotools ranks them. Masks are encoded by :func:`encode_masks`; pycocotools reads their areas.

Detections are kept compactly (arrays and RLE strings per image), gathered to process 0 only and scored there
once; the other processes receive the metrics, the stats and the per-category AP.
"""

import contextlib
import io
import json
import math
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from faster_coco_eval import COCO as FasterCOCO
from faster_coco_eval import COCOeval_faster
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from vitdense.datamodules.instance_masks import encode_masks
from vitdense.tasks.base import strict_json

Backend = Literal["faster_coco_eval", "pycocotools"]
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")

# pycocotools' COCOeval.summarize(), line by line: AP or AR, IoU threshold (None: all), area, max detections.
_SUMMARY_ROWS = (
    ("AP", None, "all", 100),
    ("AP", 0.5, "all", 100),
    ("AP", 0.75, "all", 100),
    ("AP", None, "small", 100),
    ("AP", None, "medium", 100),
    ("AP", None, "large", 100),
    ("AR", None, "all", 1),
    ("AR", None, "all", 10),
    ("AR", None, "all", 100),
    ("AR", None, "small", 100),
    ("AR", None, "medium", 100),
    ("AR", None, "large", 100),
)


@dataclass(frozen=True)
class ImageResults:
    """One image's detections in COCO's results form, as arrays.

    Attributes:
        boxes: float32 (N, 4) ``x, y, w, h`` in original image pixels (``w, h`` computed in float32).
        scores: float32 (N,).
        category_ids: int64 (N,) dataset category ids.
        mask_size: ``(height, width)`` of the masks' frame; None without masks.
        mask_counts: each mask's compressed COCO RLE counts (ASCII bytes); None without masks.
        mask_areas: int64 (N,) foreground pixels of each mask (pycocotools' ``area``); None without masks.
    """

    boxes: np.ndarray
    scores: np.ndarray
    category_ids: np.ndarray
    mask_size: tuple[int, int] | None = None
    mask_counts: tuple[bytes, ...] | None = None
    mask_areas: np.ndarray | None = None


class DetectionStore:
    """The detections of many images, appended to a few growing buffers, read back as :class:`ImageResults`.

    No object per detection, and none per image on the allocator's heap: small arrays kept for every image
    sit between the large blocks that come and go with each image (its full-size masks) and stop the
    allocator from reusing their space; kept so, a COCO val2017-sized evaluation grew by 6.7 MB per image.
    An image added again replaces its earlier entry.
    """

    def __init__(self) -> None:
        self._entries: dict[int, int] = {}  # image id -> index of its latest entry
        self._detection_ends = array("q", [0])  # per entry
        self._mask_sizes = array("q")  # height, width per entry (0, 0 without masks)
        self._boxes = array("f")  # x, y, w, h per detection
        self._scores = array("f")
        self._category_ids = array("q")
        self._mask_areas = array("q")
        self._count_ends = array("q", [0])  # per detection with a mask
        self._counts = bytearray()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._entries

    def image_ids(self) -> list[int]:
        return sorted(self._entries)

    def add(self, image_id: int, results: ImageResults) -> None:
        self._entries[image_id] = len(self._detection_ends) - 1
        self._detection_ends.append(self._detection_ends[-1] + len(results.scores))
        self._boxes.frombytes(np.ascontiguousarray(results.boxes, np.float32).tobytes())
        self._scores.frombytes(np.ascontiguousarray(results.scores, np.float32).tobytes())
        self._category_ids.frombytes(np.ascontiguousarray(results.category_ids, np.int64).tobytes())
        self._mask_sizes.extend(results.mask_size or (0, 0))
        if results.mask_counts is not None and results.mask_areas is not None:
            self._mask_areas.frombytes(np.ascontiguousarray(results.mask_areas, np.int64).tobytes())
            lengths = np.cumsum([len(counts) for counts in results.mask_counts], dtype=np.int64)
            self._count_ends.frombytes((lengths + self._count_ends[-1]).tobytes())
            self._counts += b"".join(results.mask_counts)

    def extend(self, other: "DetectionStore") -> None:
        for image_id in other.image_ids():
            self.add(image_id, other[image_id])

    def __getitem__(self, image_id: int) -> ImageResults:
        entry = self._entries[image_id]
        start, end = self._detection_ends[entry], self._detection_ends[entry + 1]
        height, width = self._mask_sizes[2 * entry], self._mask_sizes[2 * entry + 1]
        masks: dict[str, Any] = {}
        if len(self._count_ends) > 1:  # detections with masks were added
            ends = self._count_ends[start : end + 1]
            counts = tuple(bytes(self._counts[a:b]) for a, b in zip(ends[:-1], ends[1:]))
            areas = np.array(self._mask_areas[start:end], np.int64)
            masks = {"mask_size": (height, width), "mask_counts": counts, "mask_areas": areas}
        return ImageResults(
            boxes=np.array(self._boxes[4 * start : 4 * end], np.float32).reshape(-1, 4),
            scores=np.array(self._scores[start:end], np.float32),
            category_ids=np.array(self._category_ids[start:end], np.int64),
            **masks,
        )


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
            detections = list(self._records(iou_type, image_ids, scored=True))
            stats[iou_type], precision, category_ids = evaluate_coco(
                coco_gt, detections, image_ids, iou_type, self.backend
            )
            del detections
            per_category[iou_type] = per_category_ap(precision, category_ids)
            metrics.update({f"{iou_type}_{name}": value for name, value in zip(STAT_NAMES, stats[iou_type])})
        self._scored_image_ids = image_ids
        return _Scores(metrics, stats, per_category)

    def _records(self, iou_type: str, image_ids: Sequence[int], scored: bool = False) -> Iterator[dict]:
        """The results of ``image_ids`` as COCO result records, without the other IoU type's field (as
        detectron2 writes them: pycocotools' loadRes would take a detection's area from its box even for
        mask AP). ``scored``: with the fields loadRes adds (``id`` from 1, ``iscrowd`` 0 and ``area``: box
        ``w * h`` or mask pixels), for COCOeval."""
        number = 0
        for image_id in image_ids:
            result = self.results[image_id]
            if len(result.scores) == 0:  # the store keeps no mask fields when nothing was detected anywhere
                continue
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
                    number += 1
                    area = field[2] * field[3] if areas is None else areas[index]
                    record.update(id=number, iscrowd=0, area=area)
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


def evaluate_coco(
    coco_gt: COCO, detections: list[dict], image_ids: Sequence[int], iou_type: str, backend: Backend
) -> tuple[list[float], np.ndarray, list[int]]:
    """Score COCO result records (with ``id``, ``area`` and ``iscrowd`` as ``loadRes`` sets them) on
    ``image_ids``.

    Returns:
        COCOeval's 12 ``stats``, its ``eval["precision"]`` (IoU thresholds, recall points, categories, area
        ranges, max detections; -1 where undefined) and the category ids of its third axis, as pycocotools
        computes them with either backend.
    """
    dataset = coco_gt.dataset
    # Shallow copies: both libraries write into the annotations they score (pycocotools replaces polygons by
    # RLE, faster-coco-eval adds "rle" and "ignore"), and the split's COCO object stays as loaded.
    ground_truth = [dict(ann) for image_id in image_ids for ann in coco_gt.imgToAnns.get(image_id, ())]
    if backend == "pycocotools":
        gt = _coco_object(COCO, dataset["images"], dataset["categories"], ground_truth)
        dt = _coco_object(COCO, dataset["images"], dataset["categories"], detections)
        evaluation = COCOeval(gt, dt, iou_type)
        evaluation.params.imgIds = list(image_ids)
        with contextlib.redirect_stdout(io.StringIO()):
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        categories = [int(i) for i in evaluation.params.catIds]
        return [float(v) for v in evaluation.stats], evaluation.eval["precision"], categories

    gt = _coco_object(FasterCOCO, dataset["images"], dataset["categories"], ground_truth)
    dt = _coco_object(FasterCOCO, dataset["images"], dataset["categories"], detections)
    evaluation = COCOeval_faster(gt, dt, iou_type, print_function=_silent)
    params = evaluation.params
    params.imgIds = list(image_ids)
    recall_points = len(params.recThrs)
    # Where a category has n scored objects, the precision at recall 2 / n says whether its two best
    # detections both match (1.0): see _as_pycocotools_precision. Added after the 101 points, sliced off.
    valid = _valid_ground_truth(ground_truth, params.catIds, params.areaRng)
    counts = sorted({int(n) for n in np.unique(valid) if n >= 2})
    params.recThrs = np.concatenate([params.recThrs, [2.0 / n for n in counts]])
    evaluation.evaluate()
    evaluation.accumulate()
    column = {n: recall_points + index for index, n in enumerate(counts)}
    precision = _as_pycocotools_precision(evaluation.eval["precision"], recall_points, valid, column)
    stats = _summary_stats(precision, evaluation.eval["recall"], params)
    return stats, precision, [int(i) for i in params.catIds]


def _valid_ground_truth(
    ground_truth: list[dict], category_ids: Sequence[int], area_ranges: list
) -> np.ndarray:
    """int64 (K, A): the objects COCOeval scores (not crowd, ``area`` inside the range) per category and area
    range; what its recall is a fraction of."""
    index = {int(category_id): k for k, category_id in enumerate(category_ids)}
    valid = np.zeros((len(category_ids), len(area_ranges)), np.int64)
    for ann in ground_truth:
        k = index.get(ann["category_id"])
        if k is None or ann.get("iscrowd", 0):
            continue
        for a, (low, high) in enumerate(area_ranges):
            if low <= ann["area"] <= high:
                valid[k, a] += 1
    return valid


# pycocotools' precision after one matched detection and no miss: tp / (tp + fp + eps) = 1 / (1 + eps).
_PYCOCOTOOLS_FIRST_MATCH = 1.0 / (1.0 + np.spacing(1))


def _as_pycocotools_precision(
    precision: np.ndarray, recall_points: int, valid: np.ndarray, column: dict[int, int]
) -> np.ndarray:
    """faster-coco-eval's precision array (with the extra recall points) as pycocotools computes it.

    pycocotools divides by ``tp + fp + eps``, faster-coco-eval (1.8.0) by ``tp + fp``. For ``tp + fp >= 2``
    both round to the same double; they differ only where one detection has been counted and it matched:
    1 - 2**-52 against 1.0. After the interpolation (each precision raised to the best one further down the
    list) that value survives exactly where a category's first counted detection matches and the second
    does not, at the recall points up to the first match's. So each 1.0 of a (IoU, category, area, max
    detections) curve is pycocotools' 1 - 2**-52 unless the curve is still 1.0 at recall 2 / n (n scored
    objects), i.e. the first two counted detections both match.
    """
    exact = np.ascontiguousarray(precision[:, :recall_points])
    num_iou, _, num_categories, num_areas, num_max_dets = exact.shape
    second_matches = np.zeros((num_iou, num_categories, num_areas, num_max_dets), bool)
    for (k, a), n in np.ndenumerate(valid):
        if n >= 2:
            second_matches[:, k, a, :] = precision[:, column[int(n)], k, a, :] == 1.0
    first_only = (exact == 1.0) & ~second_matches[:, None]
    exact[first_only] = _PYCOCOTOOLS_FIRST_MATCH
    return exact


def _summary_stats(precision: np.ndarray, recall: np.ndarray, params: Any) -> list[float]:
    """The 12 stats of pycocotools' ``COCOeval.summarize()`` from these arrays, element order included."""
    stats = []
    for kind, iou, area, max_dets in _SUMMARY_ROWS:
        values = precision if kind == "AP" else recall
        if iou is not None:
            values = values[np.where(iou == params.iouThrs)[0]]
        a, m = params.areaRngLbl.index(area), list(params.maxDets).index(max_dets)
        values = values[:, :, :, a, m] if kind == "AP" else values[:, :, a, m]
        values = values[values > -1]
        stats.append(float(np.mean(values)) if len(values) else -1.0)
    return stats


def _coco_object(
    coco_class: type, images: list[dict], categories: list[dict], annotations: list[dict]
) -> Any:
    """A ``COCO`` index over these records, built without loadRes's copies (and its polygon for every box)."""
    coco = coco_class()
    coco.dataset = {"images": images, "categories": categories, "annotations": annotations}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco.createIndex()
    return coco


def _silent(*args: object, **kwargs: object) -> None:
    """faster-coco-eval's progress messages go nowhere (pycocotools' are caught from stdout)."""


def summary_text(stats: Sequence[float]) -> str:
    """The 12 lines pycocotools' ``COCOeval.summarize()`` prints for these ``stats``."""
    lines = []
    for (kind, iou, area, max_dets), value in zip(_SUMMARY_ROWS, stats, strict=True):
        title = "Average Precision" if kind == "AP" else "Average Recall"
        iou_text = "0.50:0.95" if iou is None else f"{iou:0.2f}"
        where = f"IoU={iou_text:<9} | area={area:>6s} | maxDets={max_dets:>3d}"
        lines.append(f" {title:<18} ({kind}) @[ {where} ] = {value:0.3f}")
    return "\n".join(lines) + "\n"


def per_category_ap(precision: np.ndarray, category_ids: Sequence[int]) -> dict[int, float]:
    """AP at IoU 0.50:0.95, all areas, 100 detections, of each category id (NaN without ground truth).

    Args:
        precision: COCOeval's ``eval["precision"]``, (IoU thresholds, recall points, categories, area ranges,
            max detections), -1 where undefined.
        category_ids: the category id of each index of its third axis.
    """
    at_all_areas = precision[:, :, :, 0, -1]
    scores = {}
    for index, category_id in enumerate(category_ids):
        values = at_all_areas[:, :, index]
        values = values[values > -1]
        scores[int(category_id)] = float(values.mean()) if values.size else float("nan")
    return scores


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
