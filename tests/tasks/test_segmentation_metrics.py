import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassConfusionMatrix

from vitdense.tasks.segmentation_metrics import format_class_table, segmentation_scores


def _numpy_reference(preds: list[np.ndarray], labels: list[np.ndarray], num_classes: int, ignore: int):
    """mmsegmentation's formulas, written out directly over all pixels of all images."""
    intersect, union, label_area = np.zeros(num_classes), np.zeros(num_classes), np.zeros(num_classes)
    for pred, label in zip(preds, labels):
        keep = label != ignore
        pred, label = pred[keep], label[keep]
        hit = pred[pred == label]
        area_i = np.bincount(hit, minlength=num_classes)
        area_p = np.bincount(pred, minlength=num_classes)
        area_l = np.bincount(label, minlength=num_classes)
        intersect += area_i
        union += area_p + area_l - area_i
        label_area += area_l
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = intersect / union
        acc = intersect / label_area
    return {
        "mIoU": np.nanmean(iou),
        "aAcc": intersect.sum() / label_area.sum(),
        "mAcc": np.nanmean(acc),
        "IoU": iou,
        "Acc": acc,
    }


def test_scores_equal_a_direct_numpy_computation_with_ignore_and_absent_classes():
    rng = np.random.default_rng(0)
    num_classes, ignore = 6, 255
    preds, labels = [], []
    for shape in [(7, 9), (12, 5), (4, 4)]:
        label = rng.integers(0, 4, shape)  # classes 4 and 5 never in the ground truth
        label[rng.random(shape) < 0.2] = ignore
        pred = rng.integers(
            0, 5, shape
        )  # class 4 predicted but absent (IoU 0), class 5 absent everywhere (NaN)
        preds.append(pred)
        labels.append(label)
    metric = MulticlassConfusionMatrix(num_classes, ignore_index=ignore)
    for pred, label in zip(preds, labels):
        metric.update(torch.from_numpy(pred), torch.from_numpy(label))
    scores = segmentation_scores(metric.compute())
    reference = _numpy_reference(preds, labels, num_classes, ignore)
    for name in ("mIoU", "aAcc", "mAcc"):
        assert float(scores[name]) == pytest.approx(reference[name], abs=1e-12), name
    np.testing.assert_allclose(scores["IoU"].numpy(), reference["IoU"], equal_nan=True)
    np.testing.assert_allclose(scores["Acc"].numpy(), reference["Acc"], equal_nan=True)
    assert scores["IoU"][4] == 0.0 and torch.isnan(scores["IoU"][5])


def test_dataset_level_differs_from_per_image_average():
    big = (np.zeros((10, 10), dtype=np.int64), np.zeros((10, 10), dtype=np.int64))
    small = (np.ones((1, 2), dtype=np.int64), np.array([[1, 0]]))
    metric = MulticlassConfusionMatrix(2)
    for pred, label in (big, small):
        metric.update(torch.from_numpy(pred), torch.from_numpy(label))
    scores = segmentation_scores(metric.compute())
    assert float(scores["aAcc"]) == pytest.approx(101 / 102)


def test_class_table_lists_every_class():
    scores = segmentation_scores(torch.tensor([[3, 1, 0], [0, 2, 0], [0, 0, 0]]))
    table = format_class_table(scores, ["road", "sky", "void"])
    assert "road" in table and "nan" in table.splitlines()[3] and "aAcc" in table
