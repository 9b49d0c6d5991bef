"""Dataset-level semantic segmentation scores from one accumulated confusion matrix."""

import torch


def segmentation_scores(confmat: torch.Tensor) -> dict[str, torch.Tensor]:
    """mIoU, aAcc, mAcc and per-class IoU / accuracy, as mmsegmentation reports them.

    The matrix is summed over the whole split (and over processes), so these are dataset-level scores, not
    averages of per-image scores. A class absent from both ground truth and prediction has no IoU (NaN) and
    is left out of the mean; a class that is predicted but never present scores IoU 0 and counts. Ignored
    pixels never reach the matrix.

    Args:
        confmat: (K, K) counts, ``confmat[i, j]`` = pixels of ground-truth class ``i`` predicted as ``j``
            (torchmetrics' convention).

    Returns:
        ``mIoU``, ``aAcc``, ``mAcc`` scalars, and ``IoU``, ``Acc`` (K,) with NaN where undefined.
    """
    confmat = confmat.double()
    true_positive = confmat.diagonal()
    ground_truth = confmat.sum(dim=1)
    predicted = confmat.sum(dim=0)
    union = ground_truth + predicted - true_positive
    nan = torch.tensor(float("nan"), dtype=confmat.dtype, device=confmat.device)
    iou = torch.where(union > 0, true_positive / union.clamp(min=1), nan)
    accuracy = torch.where(ground_truth > 0, true_positive / ground_truth.clamp(min=1), nan)
    total = confmat.sum()
    return {
        "mIoU": iou.nanmean(),
        "aAcc": true_positive.sum() / total if total > 0 else nan,
        "mAcc": accuracy.nanmean(),
        "IoU": iou,
        "Acc": accuracy,
    }


def format_class_table(scores: dict[str, torch.Tensor], class_names: list[str]) -> str:
    """A fixed-width per-class IoU / Acc table (percent; ``nan`` where the class never occurs)."""
    width = max([5, *(len(name) for name in class_names)])
    lines = [f"{'class':<{width}}  {'IoU %':>6}  {'Acc %':>6}"]
    for name, iou, accuracy in zip(class_names, scores["IoU"].tolist(), scores["Acc"].tolist(), strict=True):
        lines.append(f"{name:<{width}}  {100 * iou:6.2f}  {100 * accuracy:6.2f}")
    lines.append(
        f"{'mean':<{width}}  {100 * float(scores['mIoU']):6.2f}  {100 * float(scores['mAcc']):6.2f}"
        f"   aAcc {100 * float(scores['aAcc']):.2f}"
    )
    return "\n".join(lines)
