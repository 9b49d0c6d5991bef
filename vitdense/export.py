"""Export a trained detector or segmenter at a fixed input size, checked against eager PyTorch.

:func:`export_model` wraps the model in a module with tensor inputs and outputs (:class:`DetectorForExport`,
:class:`SegmenterForExport`), captures it with ``torch.export`` and saves it (``.pt2``), optionally converts
the same program to ONNX, then loads each file back, runs it on a sample image and compares its outputs with
the eager model's (:func:`check_export`). It raises :class:`ExportCheckError` when they differ by more than
:class:`Tolerances`.

Programs take one image at the canvas size they were exported for:

* detector: ``images`` uint8 (1, 3, H, W), ``valid_size`` int64 (2,) -> ``boxes`` (D, 4), ``labels`` (D,),
  ``scores`` (D,), ``num_detections`` () and, for Mask R-CNN, ``masks`` (D, 1, 28, 28), in
  D = ``detections_per_img`` slots;
* segmenter: ``images`` (1, 3, H, W) -> ``logits`` (1, K, H, W).

Loading a ``.pt2`` file needs ``import torchvision`` first: it registers the ``nms`` and ``roi_align`` ops
that detector programs call.
"""

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torchvision
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import concat_box_prediction_layers

from vitdense.atomic_write import atomic_file, atomic_path
from vitdense.heads.detector import RCNNDetector
from vitdense.heads.segmenter import Segmenter
from vitdense.tasks.base import VitDenseTask

__all__ = [
    "CheckResult",
    "DetectorForExport",
    "ExportCheckError",
    "ExportReport",
    "SegmenterForExport",
    "Tolerances",
    "check_export",
    "export_model",
    "exportable",
]


@torch.library.register_fake("torchvision::nms")
def _nms_fake(dets: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Shape of ``torchvision.ops.nms`` under tracing: (k,) int64 indices with k >= 0.

    Replaces torchvision's own fake kernel, which makes k with ``create_unbacked_symint()`` and so with that
    function's default lower bound of 2: every exported program would assert at run time that each NMS kept
    at least two boxes, and fail on an image with one detection or none. Eager ``nms`` is unaffected; only
    tracing runs fake kernels.
    """
    torch._check(dets.dim() == 2 and dets.shape[1] == 4, lambda: f"boxes must be (N, 4), got {dets.shape}")
    torch._check(scores.dim() == 1 and scores.shape[0] == dets.shape[0], lambda: "scores must be (N,)")
    num_kept = torch.library.get_ctx().new_dynamic_size()
    return dets.new_empty(num_kept, dtype=torch.int64)


class ExportCheckError(RuntimeError):
    """The exported program's outputs differ from the eager model's on the sample image."""


@dataclass(frozen=True)
class Tolerances:
    """Largest differences from eager PyTorch that :func:`check_export` accepts.

    The exported program computes what eager PyTorch computes, in float32, but not always with the same
    kernels: torchvision's RoIAlign instead of the CPU gather, a mask head on ``detections_per_img`` padded
    boxes instead of the kept ones, ONNX's reference kernels. Measured differences are about 1e-5 (pixels or
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
    """What :func:`check_export` measured.

    Attributes:
        differences: largest absolute difference per output (``boxes`` in pixels, ``scores``, ``masks``; or
            ``logits``).
        num_detections: detections on the sample image; None for a segmenter.
    """

    differences: dict[str, float]
    num_detections: int | None


@dataclass
class ExportReport:
    """What :func:`export_model` wrote and how closely the reloaded files matched eager PyTorch.

    Attributes:
        program_path: the ``torch.export`` program (``.pt2``).
        onnx_path: the ONNX file, or None.
        image_size: (H, W) the programs take.
        input_names: the programs' inputs, in order.
        output_names: the programs' outputs, in order.
        differences: :attr:`CheckResult.differences` of the ``.pt2`` program.
        onnx_differences: the same for the ONNX file (run by onnx's reference evaluator), or None.
        tolerances: the limits both were checked against.
        num_detections: detections on the sample image (None for a segmenter). With 0, only their absence
            was compared: check with an image that has objects.
        seconds: wall time of export, save, load and checks.
        warnings: what makes the check weaker than it looks (no detections on the sample).
    """

    program_path: Path
    onnx_path: Path | None
    image_size: tuple[int, int]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    differences: dict[str, float]
    onnx_differences: dict[str, float] | None
    tolerances: Tolerances
    num_detections: int | None
    seconds: float
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A few lines for the command line."""
        h, w = self.image_size
        lines = [f"{', '.join(self.input_names)} ({h}x{w}) -> {', '.join(self.output_names)}"]
        files = [(self.program_path, self.differences), (self.onnx_path, self.onnx_differences)]
        for path, differences in files:
            if path is not None and differences is not None:
                measured = ", ".join(f"{name} {value:.2g}" for name, value in differences.items())
                lines.append(f"{path}: matches eager PyTorch, max |difference| {measured}")
        if self.num_detections is not None:
            lines.append(f"detections on the sample image: {self.num_detections}")
        if self.num_detections is None:  # a segmenter's logits
            checked = ("logit", "logit_rel")
        else:
            checked = ("box_px", "score", "mask") if "masks" in self.differences else ("box_px", "score")
        limits = ", ".join(f"{name} {getattr(self.tolerances, name):g}" for name in checked)
        lines.append(f"tolerances: {limits}")
        return "\n".join(lines + [f"warning: {text}" for text in self.warnings])


def _clip(boxes: Tensor, valid_size: Tensor) -> Tensor:
    """``clip_boxes_to_image`` with the (h, w) limits given as an int64 (2,) tensor."""
    limits = valid_size.flip(0).to(boxes.dtype).repeat(2)  # (w, h, w, h)
    return torch.minimum(boxes.clamp(min=0), limits)


def _large_enough(boxes: Tensor, min_size: float) -> Tensor:
    """Mask of the boxes that ``remove_small_boxes(boxes, min_size)`` keeps."""
    return (boxes[..., 2] - boxes[..., 0] >= min_size) & (boxes[..., 3] - boxes[..., 1] >= min_size)


def _nms_mask(boxes: Tensor, scores: Tensor, valid: Tensor, iou_threshold: float) -> Tensor:
    """Mask of the boxes that NMS over the ``valid`` boxes alone keeps, with the size of ``valid``.

    Invalid boxes score -inf: sorted after every valid box, they suppress none of them.
    """
    keep = torchvision.ops.nms(boxes, scores.masked_fill(~valid, -math.inf), iou_threshold)
    return torch.zeros_like(valid).index_fill(0, keep, True) & valid


def _batched_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """Per-label NMS by moving each label's boxes apart, as eager ``torchvision.ops.batched_nms`` does up to
    1000 boxes on the CPU and 25000 on the GPU, without its branches on the (here symbolic) box count.

    Returns:
        Indices of the kept boxes by decreasing score.
    """
    # Boxes are clipped to >= 0, so the appended 0 only matters for an empty set, where max() would fail.
    max_coordinate = torch.cat([boxes.flatten(), boxes.new_zeros(1)]).max()
    offsets = labels.to(boxes) * (max_coordinate + 1)
    return torchvision.ops.nms(boxes + offsets[:, None], scores, iou_threshold)


def _pad(x: Tensor, slots: int) -> Tensor:
    """(n, ...) -> (slots, ...): x, then zeros; n <= slots."""
    index = torch.arange(x.shape[0], device=x.device)
    return x.new_zeros((slots, *x.shape[1:])).index_copy(0, index, x)


def _check_size(image_size: tuple[int, int], divisor: int) -> tuple[int, int]:
    h, w = (int(v) for v in image_size)
    if h <= 0 or w <= 0 or h % divisor or w % divisor:
        fit_h, fit_w = (max(math.ceil(v / divisor), 1) * divisor for v in (h, w))
        raise ValueError(
            f"image_size {h}x{w}: both sides must be positive multiples of the model's size_divisibility "
            f"{divisor}, e.g. {fit_h}x{fit_w}"
        )
    return h, w


class DetectorForExport(nn.Module):
    """An eval-mode :class:`RCNNDetector` on one image of a fixed canvas size, with fixed-size outputs.

    Runs the detector's own parts (backbone, RPN head and anchors, box coders, RoI poolers and heads) and
    restates the eval post-processing of torchvision's ``RegionProposalNetwork`` and ``RoIHeads`` in a form
    ``torch.export`` can capture: RPN candidates keep fixed-size tensors with a validity mask instead of being
    filtered, and detections fill ``detections_per_img`` slots. Only the final NMS has a data-dependent size.
    Outputs equal ``detector(images, [valid_size])`` up to float rounding (:func:`check_export` verifies it),
    with one caveat inherited from torchvision: above 1000 candidate boxes, eager ``batched_nms`` on the CPU
    switches to an exact per-class loop, where this module keeps the coordinate-offset form the GPU uses;
    the two can differ when an IoU is within rounding of the threshold. Likewise, which of two overlapping
    boxes with exactly equal scores survives NMS is not specified, in eager PyTorch either.

    Masks are what eager Mask R-CNN returns: per-box (28, 28) probabilities, not pasted. Pasted canvas masks
    would be D * H * W floats per image, and :func:`vitdense.heads.paste_detections` pastes the per-box ones
    at the original image's resolution, which keeps thin parts sharp.

    Args:
        detector: the trained detector; it is switched to eval mode.
        image_size: (H, W) canvas, multiples of ``detector.size_divisibility``.
    """

    input_names = ("images", "valid_size")

    def __init__(self, detector: RCNNDetector, image_size: tuple[int, int]) -> None:
        super().__init__()
        self.detector = detector.eval()
        self.image_size = _check_size(image_size, detector.size_divisibility)
        roi_heads = detector.roi_heads
        self.with_masks = roi_heads.has_mask()
        self.slots = int(roi_heads.detections_per_img)
        names = ("boxes", "labels", "scores", "num_detections")
        self.output_names = (*names, "masks") if self.with_masks else names

    def forward(self, images: Tensor, valid_size: Tensor) -> tuple[Tensor, ...]:
        """Detect objects on one canvas.

        Args:
            images: uint8 (1, 3, H, W) RGB canvas at the exported size, the image at its top-left.
            valid_size: int64 (2,) ``(h, w)`` of the image inside the canvas, the rest being padding;
                proposals and boxes are clipped to it. ``(H, W)`` for an image that fills the canvas.

        Returns:
            ``boxes`` float32 (D, 4) ``[x1, y1, x2, y2]`` canvas pixels, ``labels`` int64 (D,) in 1..K,
            ``scores`` float32 (D,), ``num_detections`` int64 () and, for Mask R-CNN, ``masks`` float32
            (D, 1, 28, 28) per-box probabilities. The first ``num_detections`` slots hold the detections by
            decreasing score; the other slots are all 0 (label 0 is background).
        """
        images = images.float() / 255.0
        features = self.detector.backbone(images)
        proposals, proposal_valid = self._proposals(images, features, valid_size)
        boxes, scores, labels = self._detections(features, proposals, proposal_valid, valid_size)
        filled = _pad(torch.ones_like(labels, dtype=torch.bool), self.slots)
        boxes, scores, labels = (_pad(x, self.slots) for x in (boxes, scores, labels))
        outputs = (boxes, labels, scores, filled.sum())
        if not self.with_masks:
            return outputs
        roi_heads = self.detector.roi_heads
        mask_features = roi_heads.mask_head(roi_heads.mask_roi_pool(features, [boxes], [self.image_size]))
        mask_logits = roi_heads.mask_predictor(mask_features)  # (D, K + 1, 28, 28)
        masks = mask_logits.sigmoid()[torch.arange(self.slots, device=labels.device), labels][:, None]
        return (*outputs, masks * filled[:, None, None, None])

    def _proposals(
        self, images: Tensor, features: dict[str, Tensor], valid_size: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The eval RPN: (P, 4) boxes by decreasing objectness and their (P,) validity.

        The valid boxes are the eager RPN's proposals; the others pad to P = ``post_nms_top_n`` (or fewer
        when the levels hold fewer candidates).
        """
        rpn = self.detector.rpn
        maps = list(features.values())
        objectness, deltas = rpn.head(maps)
        per_level = [o[0].numel() for o in objectness]
        anchors = rpn.anchor_generator(ImageList(images, [self.image_size]), maps)
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        boxes = rpn.box_coder.decode(deltas, anchors).view(-1, 4)

        level_boxes, level_scores, level_keep = [], [], []
        for scores, candidates in zip(objectness.view(-1).split(per_level), boxes.split(per_level)):
            scores, index = scores.topk(min(rpn.pre_nms_top_n(), scores.numel()))
            scores = scores.sigmoid()
            candidates = _clip(candidates[index], valid_size)
            valid = _large_enough(candidates, rpn.min_size) & (scores >= rpn.score_thresh)
            # NMS within each level, as the eager RPN does.
            level_keep.append(_nms_mask(candidates, scores, valid, rpn.nms_thresh))
            level_boxes.append(candidates)
            level_scores.append(scores)
        keep = torch.cat(level_keep)
        ranked = torch.cat(level_scores).masked_fill(~keep, -math.inf)
        order = ranked.topk(min(rpn.post_nms_top_n(), ranked.numel())).indices
        return torch.cat(level_boxes)[order], keep[order]

    def _detections(
        self, features: dict[str, Tensor], proposals: Tensor, proposal_valid: Tensor, valid_size: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Box head and eval post-processing: (n, 4) boxes, (n,) scores and (n,) labels, n <= D."""
        roi_heads = self.detector.roi_heads
        box_features = roi_heads.box_head(roi_heads.box_roi_pool(features, [proposals], [self.image_size]))
        class_logits, box_regression = roi_heads.box_predictor(box_features)
        boxes = _clip(roi_heads.box_coder.decode(box_regression, [proposals]), valid_size)[:, 1:]
        scores = F.softmax(class_logits, -1)[:, 1:]  # (P, K), background dropped
        num_classes = scores.shape[1]
        labels = torch.arange(1, num_classes + 1, device=scores.device).expand_as(scores).reshape(-1)
        boxes, scores = boxes.reshape(-1, 4), scores.reshape(-1)
        candidate = (
            proposal_valid.repeat_interleave(num_classes)
            & (scores > roi_heads.score_thresh)
            & _large_enough(boxes, 1e-2)
        )
        index = candidate.nonzero().squeeze(1)
        boxes, scores, labels = boxes[index], scores[index], labels[index]
        keep = _batched_nms(boxes, scores, labels, roi_heads.nms_thresh)[: self.slots]
        return boxes[keep], scores[keep], labels[keep]


class SegmenterForExport(nn.Module):
    """An eval-mode :class:`Segmenter` that returns its logits as one tensor, for export at a fixed size.

    Args:
        segmenter: the trained segmenter; it is switched to eval mode.
        image_size: (H, W) input, multiples of ``segmenter.size_divisibility``.
    """

    input_names = ("images",)
    output_names = ("logits",)

    def __init__(self, segmenter: Segmenter, image_size: tuple[int, int]) -> None:
        super().__init__()
        self.segmenter = segmenter.eval()
        self.image_size = _check_size(image_size, segmenter.size_divisibility)

    def forward(self, images: Tensor) -> Tensor:
        """Logits of one image.

        Args:
            images: (1, 3, H, W) RGB, uint8 in [0, 255] or float in [0, 1] (the dtype it was exported with).
                An image smaller than the input goes at the top-left, zero-padded; crop its logits.

        Returns:
            float32 (1, K, H, W) logits.
        """
        return self.segmenter(images)["out"]


def _unwrap(model: nn.Module) -> RCNNDetector | Segmenter:
    """The detector or segmenter itself, also out of a task that holds it as ``.model``."""
    inner = getattr(model, "model", model)
    if isinstance(inner, (RCNNDetector, Segmenter)):
        return inner
    raise TypeError(
        "can export an RCNNDetector, a Segmenter or a task holding one as `.model`, "
        f"not {type(model).__name__}"
    )


def exportable(model: nn.Module, image_size: tuple[int, int]) -> DetectorForExport | SegmenterForExport:
    """Wrap a detector, a segmenter or a task holding one for export at ``image_size`` (H, W); a task gives
    its own wrapper (:meth:`~vitdense.tasks.task_contract.DenseTask.export_wrapper`)."""
    if isinstance(model, VitDenseTask):
        return model.export_wrapper(image_size)
    inner = _unwrap(model)
    if isinstance(inner, RCNNDetector):
        return DetectorForExport(inner, image_size)
    return SegmenterForExport(inner, image_size)


def _sample_inputs(
    wrapper: DetectorForExport | SegmenterForExport, sample: Tensor | None, valid_size: tuple[int, int] | None
) -> tuple[Tensor, ...]:
    """The wrapper's inputs for one sample image, on the model's device."""
    h, w = wrapper.image_size
    device = next(wrapper.parameters()).device
    if sample is None:
        # Smooth colour blobs rather than noise give a detector something to fire on; a real image is better.
        coarse = torch.rand(
            1, 3, max(h // 32, 2), max(w // 32, 2), generator=torch.Generator().manual_seed(0)
        )
        sample = (F.interpolate(coarse, size=(h, w), mode="bilinear") * 255).round().to(torch.uint8)
    if sample.ndim == 3:
        sample = sample[None]
    if sample.ndim != 4 or tuple(sample.shape) != (1, 3, h, w):
        raise ValueError(
            f"sample must be one (3, {h}, {w}) image at the export size, got shape {tuple(sample.shape)}; "
            "resize and pad it as the eval transform does"
        )
    sample = sample.to(device)
    if isinstance(wrapper, SegmenterForExport):
        return (sample,)
    if sample.dtype != torch.uint8:
        raise TypeError(f"a detector is exported for uint8 images, but the sample is {sample.dtype}")
    vh, vw = valid_size if valid_size is not None else (h, w)
    if not (0 < vh <= h and 0 < vw <= w):
        raise ValueError(f"valid_size {(vh, vw)} must lie within the {h}x{w} canvas")
    return sample, torch.tensor([vh, vw], dtype=torch.int64, device=device)


def _run_onnx(path: Path, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Run an ONNX file on the CPU with onnx's own reference evaluator (NumPy; no ONNX runtime needed)."""
    import numpy as np
    import onnx
    from onnx.reference import ReferenceEvaluator
    from onnx.reference.ops.op_non_max_suppression import NonMaxSuppression as ReferenceNMS

    class NonMaxSuppression(ReferenceNMS):
        # The reference kernel indexes its scalar inputs as 1-d; the ONNX spec and the exporter make them 0-d.
        def _run(  # noqa: ANN202 (NumPy arrays in and out, as in onnx.reference)
            self,
            boxes,
            scores,
            max_output=None,
            iou_threshold=None,
            score_threshold=None,
            center_point_box=None,
        ):
            max_output, iou_threshold, score_threshold = (
                None if x is None else x.reshape(-1) for x in (max_output, iou_threshold, score_threshold)
            )
            return super()._run(boxes, scores, max_output, iou_threshold, score_threshold, center_point_box)

    model = onnx.load(str(path))
    evaluator = ReferenceEvaluator(model, new_ops=[NonMaxSuppression])
    feeds = {node.name: x.cpu().numpy() for node, x in zip(model.graph.input, inputs, strict=True)}
    # log(0) = -inf and the like are valid ONNX results (e.g. the RoI level of an empty padding slot).
    with np.errstate(all="ignore"):
        outputs = evaluator.run(None, feeds)
    return tuple(torch.from_numpy(value) for value in outputs)


def _largest(difference: Tensor) -> tuple[float, int]:
    """Largest absolute value and its flat index (0.0, -1 for an empty tensor)."""
    if difference.numel() == 0:
        return 0.0, -1
    flat = difference.flatten().abs()
    index = int(flat.argmax())
    return float(flat[index]), index


def _compare_detections(
    exported: tuple[Tensor, ...], eager: dict[str, Tensor], tolerances: Tolerances
) -> dict[str, float]:
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


def _compare_logits(exported: Tensor, eager: Tensor, tolerances: Tolerances) -> dict[str, float]:
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


def check_export(
    exported: torch.export.ExportedProgram | str | Path,
    model: nn.Module,
    image_size: tuple[int, int],
    sample: Tensor | None = None,
    *,
    valid_size: tuple[int, int] | None = None,
    tolerances: Tolerances | None = None,
) -> CheckResult:
    """Run an exported program and the eager model on one image and compare their outputs.

    Args:
        exported: a program, a ``.pt2`` file, or an ``.onnx`` file (run with onnx's reference evaluator on
            the CPU; the model must then be on the CPU too).
        model: the eager detector, segmenter or task the program should reproduce; left in its mode.
        image_size: (H, W) the program was exported at.
        sample: one image, (3, H, W) or (1, 3, H, W), at that size, uint8 (a segmenter exported for float
            input takes float in [0, 1]); default: a fixed synthetic image.
        valid_size: detector only, (h, w) of the image inside the canvas; default the whole canvas.
        tolerances: largest accepted differences; default :class:`Tolerances`.

    Returns:
        The largest difference per output and the number of detections.

    Raises:
        ExportCheckError: another number of detections, a detection without a counterpart of its label, or
            a difference above its tolerance; the message names the output, the difference and the detection
            or pixel.
    """
    tolerances = tolerances or Tolerances()
    inner = _unwrap(model)
    training = inner.training
    try:
        wrapper = exportable(model, image_size)
        inputs = _sample_inputs(wrapper, sample, valid_size)
        with torch.no_grad():
            if isinstance(exported, (str, Path)) and Path(exported).suffix == ".onnx":
                if inputs[0].device.type != "cpu":
                    raise ValueError("an ONNX file is checked on the CPU: move the model to the CPU first")
                outputs = _run_onnx(Path(exported), inputs)
            else:
                if not isinstance(exported, torch.export.ExportedProgram):
                    exported = torch.export.load(str(exported))
                outputs = exported.module()(*inputs)
            if isinstance(wrapper, SegmenterForExport):
                logits = outputs[0] if isinstance(outputs, tuple) else outputs
                return CheckResult(_compare_logits(logits, wrapper(*inputs), tolerances), None)
            eager = inner(inputs[0], [tuple(int(v) for v in inputs[1])])[0]
    finally:
        inner.train(training)
    return CheckResult(_compare_detections(tuple(outputs), eager, tolerances), int(outputs[3]))


def export_model(
    model: nn.Module,
    image_size: tuple[int, int],
    path: str | Path,
    *,
    sample: Tensor | None = None,
    valid_size: tuple[int, int] | None = None,
    onnx: bool = False,
    tolerances: Tolerances | None = None,
) -> ExportReport:
    """Export a detector or segmenter at a fixed input size, reload it and check it against eager PyTorch.

    Writes ``path`` with ``torch.export.save`` (name it ``*.pt2``) and, with ``onnx``, the same program as
    ``path.with_suffix(".onnx")`` (``torch.onnx.export(..., dynamo=True)``, weights inside the file), each
    whole or not at all (:mod:`vitdense.atomic_write`). Each file is loaded back and compared with the eager
    model on ``sample`` (:func:`check_export`). The model is left in the mode it came in.

    Args:
        model: an :class:`RCNNDetector`, a :class:`Segmenter`, or a task holding one as ``.model`` (e.g. a
            ``DetectionTask`` restored from a checkpoint), on the device to export for; the CPU for ONNX.
        image_size: (H, W) input of the exported program, multiples of the model's ``size_divisibility``
            (56 for a simple feature pyramid with p6, 14 for a plain ViT).
        path: where to write the program.
        sample: image to check on, (3, H, W) or (1, 3, H, W) at ``image_size``, uint8 (a segmenter may take
            float in [0, 1], and is then exported for float input). Default: a synthetic image of smooth
            colour blobs, on which a trained detector may find nothing; pass a real image for a meaningful
            check.
        valid_size: detector only, (h, w) of the sample inside the canvas; default the whole canvas.
        onnx: also write and check ONNX (needs the ``onnx`` and ``onnxscript`` packages). Checking runs onnx's
            pure-NumPy reference evaluator: seconds for the demo models, much longer for a full-size ViT.
        tolerances: largest accepted differences; default :class:`Tolerances`.

    Returns:
        An :class:`ExportReport`: paths, inputs and outputs of the program, measured differences.

    Raises:
        ExportCheckError: a reloaded file's outputs differ from eager PyTorch. The files stay on disk.
    """
    start = time.perf_counter()
    tolerances = tolerances or Tolerances()
    path = Path(path)
    inner = _unwrap(model)
    training = inner.training
    try:
        wrapper = exportable(model, image_size)
        inputs = _sample_inputs(wrapper, sample, valid_size)
        if onnx and inputs[0].device.type != "cpu":
            raise ValueError("ONNX is exported and checked on the CPU: move the model to the CPU first")
        with torch.no_grad():
            program = torch.export.export(wrapper, inputs, strict=False)
        with atomic_file(path) as file:
            torch.export.save(program, file)
        onnx_path = path.with_suffix(".onnx") if onnx else None
        if onnx_path is not None:
            with atomic_path(onnx_path) as temporary:
                torch.onnx.export(
                    program,
                    f=str(temporary),
                    dynamo=True,
                    input_names=list(wrapper.input_names),
                    output_names=list(wrapper.output_names),
                    external_data=False,
                    verbose=False,
                )
        check = check_export(path, inner, image_size, inputs[0], valid_size=valid_size, tolerances=tolerances)
        onnx_check = None
        if onnx_path is not None:
            onnx_check = check_export(
                onnx_path, inner, image_size, inputs[0], valid_size=valid_size, tolerances=tolerances
            )
    finally:
        inner.train(training)
    warnings = []
    if check.num_detections == 0:
        warnings.append("no detections on the sample image: only their absence was compared")
    return ExportReport(
        program_path=path,
        onnx_path=onnx_path,
        image_size=wrapper.image_size,
        input_names=wrapper.input_names,
        output_names=wrapper.output_names,
        differences=check.differences,
        onnx_differences=onnx_check.differences if onnx_check is not None else None,
        tolerances=tolerances,
        num_detections=check.num_detections,
        seconds=time.perf_counter() - start,
        warnings=warnings,
    )
