"""A detector as an exportable module: one canvas in, fixed-size detections out."""

import torch
from torch import Tensor, nn

from vitdense.export.canvas import check_size, sample_image
from vitdense.export.comparison import CheckResult, Tolerances, compare_detections
from vitdense.heads.detector import RCNNDetector

__all__ = ["DetectorForExport"]


def _pad(x: Tensor, slots: int) -> Tensor:
    """(n, ...) -> (slots, ...): x, then zeros; n <= slots."""
    index = torch.arange(x.shape[0], device=x.device)
    return x.new_zeros((slots, *x.shape[1:])).index_copy(0, index, x)


class DetectorForExport(nn.Module):
    """An eval-mode :class:`RCNNDetector` on one image of a fixed canvas size, with fixed-size outputs.

    Runs the detector's own eval path, :meth:`RCNNDetector.detect` (Faster / Mask R-CNN and Cascade Mask
    R-CNN alike), with the valid region as a tensor input, and pads its detections to ``detections_per_img``
    slots. The post-processing is the eager one (:mod:`vitdense.heads.detection_postprocess`); only its NMS
    takes a fixed form under ``torch.export``, which can differ from eager ``batched_nms`` where an IoU is
    within rounding of the threshold. Which of two overlapping boxes with exactly equal scores survives NMS
    is not specified, in eager PyTorch either. Outputs equal ``detector(images, [valid_size])`` up to float
    rounding (:func:`~vitdense.export.check_export` verifies it).

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
        self.image_size = check_size(image_size, detector.size_divisibility)
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
        detections = self.detector.detect(images.float() / 255.0, [valid_size])[0]
        filled = _pad(torch.ones_like(detections["labels"], dtype=torch.bool), self.slots)
        names = ("boxes", "labels", "scores", "masks") if self.with_masks else ("boxes", "labels", "scores")
        padded = [_pad(detections[name], self.slots) for name in names]
        return (*padded[:3], filled.sum(), *padded[3:])

    def sample_inputs(
        self, sample: Tensor | None, valid_size: tuple[int, int] | None
    ) -> tuple[Tensor, Tensor]:
        """``images`` and ``valid_size`` for one uint8 sample image (default: a synthetic one), on the model's
        device; ``valid_size`` (h, w) defaults to the whole canvas."""
        h, w = self.image_size
        device = next(self.parameters()).device
        images = sample_image(sample, self.image_size, device)
        if images.dtype != torch.uint8:
            raise TypeError(f"a detector is exported for uint8 images, but the sample is {images.dtype}")
        vh, vw = valid_size if valid_size is not None else (h, w)
        if not (0 < vh <= h and 0 < vw <= w):
            raise ValueError(f"valid_size {(vh, vw)} must lie within the {h}x{w} canvas")
        return images, torch.tensor([vh, vw], dtype=torch.int64, device=device)

    def compare(
        self, outputs: tuple[Tensor, ...], inputs: tuple[Tensor, ...], tolerances: Tolerances
    ) -> CheckResult:
        """Compare a program's ``outputs`` on ``inputs`` with the eager detector's detections."""
        images, valid_size = inputs
        eager = self.detector(images, [tuple(int(v) for v in valid_size)])[0]
        return CheckResult(compare_detections(tuple(outputs), eager, tolerances), int(outputs[3]))
