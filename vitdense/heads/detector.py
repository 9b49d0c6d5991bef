"""Two-stage detector (Faster / Mask R-CNN) on a padded canvas, and mapping its output back to the original.

Unlike torchvision's `GeneralizedRCNN` there is no transform inside the model: the data pipeline resizes each
image by a scale factor and pads the batch to a canvas whose sides are multiples of the backbone's
`size_divisibility`; the model sees only that canvas. `paste_detections` undoes the scale afterwards.
"""

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import boxes as box_ops

from vitdense.heads.canvas_model import CanvasModel
from vitdense.heads.detection_postprocess import ImageSize, propose
from vitdense.heads.mask_paste import paste_masks

if TYPE_CHECKING:
    from vitdense.export.detector_wrapper import DetectorForExport

__all__ = ["RCNNDetector", "paste_detections"]


class RCNNDetector(CanvasModel):
    """Backbone, region proposal network and RoI heads, wired as in torchvision's `GeneralizedRCNN`.

    Args:
        backbone: module with `out_channels: int`, `strides: dict[str, float]`, `size_divisibility: int`,
            whose `forward(images (B, 3, H, W) float in [0, 1])` returns an ordered dict of
            (B, C, H / s, W / s) maps.
        rpn: torchvision `RegionProposalNetwork` whose anchor generator covers every backbone level.
        roi_heads: torchvision `RoIHeads` (with mask branch for Mask R-CNN) whose poolers use the true
            strides.
    """

    def __init__(self, backbone: nn.Module, rpn: RegionProposalNetwork, roi_heads: RoIHeads) -> None:
        super().__init__(backbone, ("out_channels", "strides", "size_divisibility"))
        self.rpn = rpn
        self.roi_heads = roi_heads

    def export_wrapper(self, image_size: tuple[int, int]) -> "DetectorForExport":
        """This detector as a :class:`~vitdense.export.DetectorForExport` at ``image_size`` (H, W)."""
        # Imported here: the wrapper's module imports this one.
        from vitdense.export.detector_wrapper import DetectorForExport

        return DetectorForExport(self, image_size)

    def _check_inputs(
        self, images: Tensor, image_sizes: list[tuple[int, int]], targets: list[dict[str, Tensor]] | None
    ) -> None:
        if images.ndim != 4:
            raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
        b, _, h, w = images.shape
        d = self.size_divisibility
        if h % d or w % d:
            raise ValueError(
                f"images are {h}x{w} but the backbone needs sides that are multiples of {d}; "
                f"pad the batch to a multiple of {d} (e.g. {math.ceil(h / d) * d}x{math.ceil(w / d) * d})"
            )
        if len(image_sizes) != b:
            raise ValueError(f"got {len(image_sizes)} image_sizes for a batch of {b} images")
        for i, (ih, iw) in enumerate(image_sizes):
            if ih > h or iw > w:
                raise ValueError(f"image_sizes[{i}] = {(ih, iw)} exceeds the {h}x{w} canvas")
        if not self.training:
            return
        if targets is None:
            raise ValueError("targets are required in training mode")
        if len(targets) != b:
            raise ValueError(f"got {len(targets)} targets for a batch of {b} images")
        for i, t in enumerate(targets):
            boxes = t["boxes"]
            if boxes.ndim != 2 or boxes.shape[-1] != 4 or not boxes.is_floating_point():
                raise ValueError(
                    f"targets[{i}]['boxes'] must be float (N, 4), got {boxes.dtype} {tuple(boxes.shape)}"
                )
        # One host read for the whole batch (on a GPU, each waits for the queued work); details on failure.
        all_boxes = torch.cat([t["boxes"] for t in targets])
        if (all_boxes[:, 2:] <= all_boxes[:, :2]).any():
            for i, t in enumerate(targets):
                degenerate = (t["boxes"][:, 2:] <= t["boxes"][:, :2]).any(dim=1)
                if degenerate.any():
                    j = int(torch.where(degenerate)[0][0])
                    raise ValueError(
                        f"targets[{i}]['boxes'][{j}] = {t['boxes'][j].tolist()} has no area; drop boxes with "
                        "x2 <= x1 or y2 <= y1 in the data pipeline"
                    )

    def forward(
        self,
        images: Tensor,
        image_sizes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses in training mode, detections in eval mode.

        Args:
            images: (B, 3, H, W) canvas, uint8 in [0, 255] (divided by 255 here) or float in [0, 1]; H and W
                are multiples of `size_divisibility`. Normalisation happens inside the backbone.
            image_sizes: per image, (h, w) of the valid (unpadded) region at the canvas' top-left; proposals
                and detections are clipped to it.
            targets: training only, per image: `boxes` float (N, 4) `[x1, y1, x2, y2]` canvas pixels, `labels`
                int64 (N,) in 1..K, and for Mask R-CNN `masks` uint8 (N, H, W) at canvas size. N may be 0.

        Returns:
            Training: dict of scalar losses `loss_objectness`, `loss_rpn_box_reg`, `loss_classifier`,
            `loss_box_reg` (+ `loss_mask` for Mask R-CNN); their sum is the training loss.
            Eval: per image a dict with `boxes` float (N, 4) `[x1, y1, x2, y2]` canvas pixels, `labels` int64
            (N,) in 1..K, `scores` float (N,), and for Mask R-CNN `masks` float (N, 1, M, M) per-box mask
            probabilities (not pasted; see `paste_detections`).
        """
        self._check_inputs(images, image_sizes, targets)
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        sizes = [(int(h), int(w)) for h, w in image_sizes]
        if not self.training:
            return self.detect(images, sizes)
        features = self.backbone(images)
        proposals, rpn_losses = self.rpn(ImageList(images, sizes), features, targets)
        _, roi_losses = self.roi_heads(features, proposals, sizes, targets)
        return {**rpn_losses, **roi_losses}

    def detect(self, images: Tensor, image_sizes: Sequence[ImageSize]) -> list[dict[str, Tensor]]:
        """Eval detections, without the input checks of `forward`; what `torch.export` captures. The model
        must be in eval mode.

        The RPN's parts run here and its proposals are selected by
        :func:`~vitdense.heads.detection_postprocess.propose` (what `RegionProposalNetwork.forward` returns
        in eval, also for tensor sizes); the RoI heads post-process with the same module.

        Args:
            images: (B, 3, H, W) float canvas in [0, 1], H and W multiples of `size_divisibility`.
            image_sizes: per image, (h, w) of the valid region: two ints, or an int64 (2,) tensor.

        Returns:
            As `forward` in eval mode.
        """
        features = self.backbone(images)
        proposals = propose(self.rpn, images, features, image_sizes)
        detections, _ = self.roi_heads(features, proposals, list(image_sizes))
        return detections


def paste_detections(
    detections: list[dict[str, Tensor]],
    scales: Sequence[float],
    original_sizes: Sequence[tuple[int, int]],
    mask_threshold: float = 0.5,
) -> list[dict[str, Tensor]]:
    """Map canvas-frame detections back to the original images.

    Args:
        detections: `RCNNDetector` eval output, per image `boxes` (N, 4) canvas pixels, `labels`, `scores`,
            and optionally `masks` float (N, 1, M, M) probabilities.
        scales: per image, the factor the pipeline resized the original by (canvas = original * scale).
        original_sizes: per image, (h, w) of the original image.
        mask_threshold: probability above which a pasted mask pixel is foreground.

    Returns:
        New dicts per image: `boxes` float (N, 4) `[x1, y1, x2, y2]` original pixels, clipped to the image;
        `labels` and `scores` unchanged; `masks` bool (N, h, w) pasted at the original resolution.
    """
    if not (len(detections) == len(scales) == len(original_sizes)):
        raise ValueError(
            f"got {len(detections)} detections, {len(scales)} scales and {len(original_sizes)} original sizes"
        )
    out = []
    for det, scale, (h, w) in zip(detections, scales, original_sizes):
        boxes = box_ops.clip_boxes_to_image(det["boxes"] / float(scale), (int(h), int(w)))
        result = {**det, "boxes": boxes}
        if "masks" in det:
            # Pasting at the original size (not pasting on the canvas and resizing) keeps thin parts sharp.
            result["masks"] = paste_masks(det["masks"], boxes, (int(h), int(w)), threshold=mask_threshold)
        out.append(result)
    return out
