"""COCO AP of result records: faster-coco-eval's ``COCOeval_faster`` (default) or pycocotools' ``COCOeval``.

faster-coco-eval's matching and accumulation are detectron2's C++ port of pycocotools' (same rules: IoU
thresholds 0.50:0.95, 101 recall points, areas all / small / medium / large, 1 / 10 / 100 detections, crowd
regions matched as ignored, ground-truth ``area`` for the ranges, stable score order), with mask IoUs on
several threads: at COCO val2017's scale (5k images, 500k detections with masks) a fraction of pycocotools'
time and memory (``benchmarks/README.md``). Its options stay at the defaults that follow pycocotools: no LVIS
rules (``lvis_style``), categories used (``useCats``), the ground truth's ``area`` (``use_area``);
``separate_eval`` only splits the C++ call in two.

A category's precision and recall depend on its own objects and detections alone, so faster-coco-eval scores
the categories in runs of at most ``_DETECTIONS_PER_PASS`` detections and the arrays are joined along the
categories' axis: the result records and the library's copies of them (an RLE per mask, its match tables)
exist for one run at a time, not for all the results at once.

It differs in one rounding: a precision is ``tp / (tp + fp)``, pycocotools' ``tp / (tp + fp + eps)``, which
is 1 - 2**-52 instead of 1 after a single match (see :func:`_as_pycocotools_precision`, which puts that back,
so that the reported numbers, the per-category AP and the results files re-scored by pycocotools agree to the
last bit).
"""

import contextlib
import io
import math
from collections.abc import Collection, Iterator, Sequence
from typing import Any, Literal, Protocol

import numpy as np
from faster_coco_eval import COCO as FasterCOCO
from faster_coco_eval import COCOeval_faster
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

Backend = Literal["faster_coco_eval", "pycocotools"]
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")

# faster-coco-eval scores at most this many detections at a time (see the module docstring).
_DETECTIONS_PER_PASS = 100_000

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


class ResultRecords(Protocol):
    """The detections to score, made into COCO result records a few categories at a time."""

    def counts(self) -> dict[int, int]:
        """The number of detections of each category id."""
        ...

    def records(self, category_ids: Collection[int]) -> Iterator[dict]:
        """The result records of these categories in the results' order, with ``id``, ``area`` and
        ``iscrowd`` as ``loadRes`` sets them (``id`` numbered over all the results)."""
        ...


def evaluate_coco(
    coco_gt: COCO, detections: ResultRecords, image_ids: Sequence[int], iou_type: str, backend: Backend
) -> tuple[list[float], np.ndarray, list[int]]:
    """Score the result records on ``image_ids``.

    Returns:
        COCOeval's 12 ``stats``, its ``eval["precision"]`` (IoU thresholds, recall points, categories, area
        ranges, max detections; -1 where undefined) and the category ids of its third axis, as pycocotools
        computes them with either backend.
    """
    dataset = coco_gt.dataset
    if backend == "pycocotools":
        records = list(detections.records(detections.counts()))
        gt = _coco_object(COCO, dataset["images"], dataset["categories"], _ground_truth(coco_gt, image_ids))
        dt = _coco_object(COCO, dataset["images"], dataset["categories"], records)
        evaluation = COCOeval(gt, dt, iou_type)
        evaluation.params.imgIds = list(image_ids)
        with contextlib.redirect_stdout(io.StringIO()):
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        categories = [int(i) for i in evaluation.params.catIds]
        return [float(v) for v in evaluation.stats], evaluation.eval["precision"], categories

    category_ids = sorted(int(i) for i in coco_gt.getCatIds())
    precisions, recalls = [], []
    for group in _category_groups(category_ids, detections.counts(), _DETECTIONS_PER_PASS):
        params, precision, recall = _evaluate_faster(coco_gt, detections, image_ids, iou_type, group)
        precisions.append(precision)
        recalls.append(recall)
    precision, recall = np.concatenate(precisions, axis=2), np.concatenate(recalls, axis=1)
    return _summary_stats(precision, recall, params), precision, category_ids


def _category_groups(category_ids: list[int], counts: dict[int, int], budget: int) -> list[list[int]]:
    """Consecutive runs of ``category_ids`` with at most ``budget`` detections each (a category with more
    is a run of its own); at least one run."""
    groups: list[list[int]] = [[]]
    held = 0
    for category_id in category_ids:
        count = counts.get(category_id, 0)
        if groups[-1] and held + count > budget:
            groups.append([])
            held = 0
        groups[-1].append(category_id)
        held += count
    return groups


def _evaluate_faster(
    coco_gt: COCO, detections: ResultRecords, image_ids: Sequence[int], iou_type: str, category_ids: list[int]
) -> tuple[Any, np.ndarray, np.ndarray]:
    """faster-coco-eval's COCOeval on these categories alone.

    Returns:
        Its ``params``, the precision as pycocotools computes it (:func:`_as_pycocotools_precision`) and its
        ``eval["recall"]``; the categories' axis is ``category_ids``.
    """
    dataset = coco_gt.dataset
    wanted = set(category_ids)
    ground_truth = _ground_truth(coco_gt, image_ids, wanted)
    gt = _coco_object(FasterCOCO, dataset["images"], dataset["categories"], ground_truth)
    dt = _coco_object(FasterCOCO, dataset["images"], dataset["categories"], list(detections.records(wanted)))
    evaluation = COCOeval_faster(gt, dt, iou_type, print_function=_silent)
    params = evaluation.params
    params.imgIds = list(image_ids)
    params.catIds = list(category_ids)
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
    return params, precision, evaluation.eval["recall"]


def _ground_truth(
    coco_gt: COCO, image_ids: Sequence[int], category_ids: Collection[int] | None = None
) -> list[dict]:
    """Shallow copies of the annotations of ``image_ids`` (of ``category_ids`` only, where given): both
    libraries write into the annotations they score (pycocotools replaces polygons by RLE, faster-coco-eval
    adds "rle" and "ignore"), and the split's COCO object stays as loaded."""
    return [
        dict(ann)
        for image_id in image_ids
        for ann in coco_gt.imgToAnns.get(image_id, ())
        if category_ids is None or ann["category_id"] in category_ids
    ]


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
