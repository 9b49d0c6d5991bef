"""How closely an exported program's outputs match the eager model's, and the limits they must meet."""

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["CheckResult", "ExportCheckError", "Tolerances", "compare_detections", "compare_logits"]


class ExportCheckError(RuntimeError):
    """The exported program's outputs differ from the eager model's on the sample image."""


@dataclass(frozen=True)
class Tolerances:
    """Largest differences from eager PyTorch that :func:`~vitdense.export.check_export` accepts.

    The exported program computes what eager PyTorch computes, in float32, but not always with the same
    kernels: torchvision's RoIAlign instead of the CPU gather, ONNX's reference kernels, another NMS form
    (:mod:`vitdense.heads.detection_postprocess`). Measured differences are about 1e-5 (pixels or
    probabilities) and often 0; the defaults leave two to three orders of magnitude of room and still fail on
    any real change (a box off by a hundredth of a pixel, a missing or extra detection).

    Args:
        box_px: boxes, absolute, in canvas pixels.
        score: detection scores (probabilities).
        mask: Mask R-CNN per-box mask probabilities.
        logit: segmentation logits, absolute part.
        logit_rel: segmentation logits, part proportional to the largest absolute eager logit.
    """

    box_px: float = 1e-2
    score: float = 1e-4
    mask: float = 1e-3
    logit: float = 1e-3
    logit_rel: float = 1e-4


class CheckResult(NamedTuple):
    """What :func:`~vitdense.export.check_export` measured.

    Attributes:
        differences: largest absolute difference per output (``boxes`` in pixels, ``scores``, ``masks``; or
            ``logits``).
        num_detections: detections on the sample image; None for a segmenter.
    """

    differences: dict[str, float]
    num_detections: int | None


def _largest(difference: Tensor) -> tuple[float, int]:
    """Largest absolute value and its flat index (0.0, -1 for an empty tensor)."""
    if difference.numel() == 0:
        return 0.0, -1
    flat = difference.flatten().abs()
    index = int(flat.argmax())
    return float(flat[index]), index


def compare_detections(
    exported: tuple[Tensor, ...], eager: dict[str, Tensor], tolerances: Tolerances
) -> dict[str, float]:
    """Pair a detector program's detections with the eager ones and measure the largest differences.

    Args:
        exported: the program's ``boxes`` (D, 4), ``labels`` (D,), ``scores`` (D,), ``num_detections`` () and
            optionally ``masks`` (D, 1, M, M), the first ``num_detections`` slots filled.
        eager: the eager detector's ``boxes`` (N, 4), ``labels``, ``scores`` and optionally ``masks``.
        tolerances: the limits.

    Returns:
        The largest absolute difference per output (``boxes`` in pixels, ``scores``, ``masks``).

    Raises:
        ExportCheckError: another count, a detection without a counterpart of its label, or a difference
            above its tolerance.
    """
    boxes, labels, scores, count = (x.cpu() for x in exported[:4])
    eager = {name: value.cpu() for name, value in eager.items()}
    n = int(count)
    if n != len(eager["boxes"]):
        raise ExportCheckError(
            f"the exported program finds {n} detections on the sample image, eager PyTorch "
            f"{len(eager['boxes'])}; top scores exported {scores[:n].tolist()[:5]}, eager "
            f"{eager['scores'].tolist()[:5]}"
        )
    # Detections with scores equal up to rounding may come out in either order: pair each eager detection
    # with the unpaired exported one of its label whose box is closest.
    order: list[int] = []
    unpaired = list(range(n))
    for i, label in enumerate(eager["labels"].tolist()):
        same = [j for j in unpaired if int(labels[j]) == label]
        if not same:
            raise ExportCheckError(
                f"eager detection {i} (label {label}, score {float(eager['scores'][i]):.4f}, box "
                f"{eager['boxes'][i].tolist()}) has no exported counterpart with that label"
            )
        j = min(same, key=lambda k: float((boxes[k] - eager["boxes"][i]).abs().max()))
        order.append(j)
        unpaired.remove(j)
    pairs = {"boxes": (boxes[order], eager["boxes"], tolerances.box_px)}
    pairs["scores"] = (scores[order], eager["scores"], tolerances.score)
    if len(exported) > 4:
        pairs["masks"] = (exported[4].cpu()[order], eager["masks"], tolerances.mask)
    differences = {}
    for name, (ours, theirs, limit) in pairs.items():
        value, flat_index = _largest(ours.float() - theirs.float())
        differences[name] = value
        if value > limit or not math.isfinite(value):
            i = flat_index // theirs[0].numel()
            raise ExportCheckError(
                f"exported {name} differ from eager PyTorch by {value:.3g} (tolerance {limit:g}) at "
                f"detection {i} (label {int(eager['labels'][i])}, score {float(eager['scores'][i]):.4f}, "
                f"eager box {eager['boxes'][i].tolist()}, exported box {boxes[order[i]].tolist()})"
            )
    return differences


def compare_logits(exported: Tensor, eager: Tensor, tolerances: Tolerances) -> dict[str, float]:
    """Largest difference ``{"logits": value}`` of (1, K, H, W) logits; raises :class:`ExportCheckError`
    above ``logit + logit_rel * max |eager|``."""
    exported, eager = exported.cpu().float(), eager.cpu().float()
    if exported.shape != eager.shape:
        raise ExportCheckError(f"exported logits are {tuple(exported.shape)}, eager {tuple(eager.shape)}")
    value, index = _largest(exported - eager)
    limit = tolerances.logit + tolerances.logit_rel * float(eager.abs().max())
    if value > limit or not math.isfinite(value):
        where = tuple(int(i) for i in torch.unravel_index(torch.tensor(index), eager.shape))
        raise ExportCheckError(
            f"exported logits differ from eager PyTorch by {value:.3g} (tolerance {limit:.3g}) at "
            f"(b, k, y, x) = {where}: eager {float(eager[where]):.6g}, exported {float(exported[where]):.6g}"
        )
    return {"logits": value}
