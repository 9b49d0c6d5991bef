"""torchvision's box and mask RoI heads, with mask targets cropped the way the mask features are pooled.

torchvision's `maskrcnn_loss` crops each ground-truth mask to its proposal with `roi_align(aligned=False)`,
which reads pixel i's value at coordinate i, while the features it is compared with are pooled with ROIAlignV2
(`aligned=True`: pixel i covers [i, i + 1], its value sits at i + 0.5). Each target showed the object half a
canvas pixel up and left of where the features at the same bin show it, and the heads learned masks shifted
by that much. Here the targets are cropped with ROIAlignV2 too, as in detectron2.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss
from torchvision.ops import roi_align

from vitdense.heads.detection_postprocess import ImageSize, detections_per_image, mask_probabilities

__all__ = ["AlignedRoIHeads", "RoIHeadsMixin", "mask_loss", "mask_targets"]


def mask_targets(gt_masks: Tensor, boxes: Tensor, gt_index: Tensor, size: int) -> Tensor:
    """Each box's matched ground-truth mask cropped to the box and resampled to `size` x `size` bins.

    Args:
        gt_masks: (G, H, W) masks of one image (any dtype; 0 / 1), canvas pixels.
        boxes: (P, 4) float `[x1, y1, x2, y2]` canvas pixels.
        gt_index: (P,) int64, the ground truth each box is matched to.
        size: bins per side M.

    Returns:
        (P, M, M) float soft targets in [0, 1]: ROIAlignV2 averages of the mask over each bin (adaptive
        sampling: about one sample per canvas pixel), the convention `ExactMultiScaleRoIAlign` pools with.
    """
    rois = torch.cat([gt_index[:, None].to(boxes), boxes], dim=1)
    return roi_align(gt_masks[:, None].to(boxes), rois, (size, size), 1.0, sampling_ratio=-1, aligned=True)[
        :, 0
    ]


def mask_loss(
    mask_logits: Tensor,
    boxes: list[Tensor],
    gt_masks: list[Tensor],
    gt_labels: list[Tensor],
    gt_index: list[Tensor],
) -> Tensor:
    """Mean per-pixel binary cross-entropy of each positive box's logits for its ground-truth class.

    Args:
        mask_logits: (P, K + 1, M, M) logits of all images' positive boxes, concatenated.
        boxes: per image, (P_i, 4) positive boxes, canvas pixels.
        gt_masks: per image, (G_i, H, W) ground-truth masks.
        gt_labels: per image, (G_i,) int64 ground-truth classes.
        gt_index: per image, (P_i,) the ground truth each positive box is matched to.

    Returns:
        Scalar loss; 0 (still connected to `mask_logits`) when there are no positive boxes.
    """
    size = mask_logits.shape[-1]
    labels = torch.cat([lab[i] for lab, i in zip(gt_labels, gt_index)])
    targets = torch.cat([mask_targets(m, b, i, size) for m, b, i in zip(gt_masks, boxes, gt_index)])
    if targets.numel() == 0:
        return mask_logits.sum() * 0
    chosen = mask_logits[torch.arange(labels.shape[0], device=labels.device), labels]
    return F.binary_cross_entropy_with_logits(chosen, targets)


class RoIHeadsMixin:
    """What Mask R-CNN's heads and the cascade's share around their box stages: the forward pass and its
    target checks, the selection of each image's detections, and the mask branch, run on the detections
    (eval) or on the positive RoIs (training).

    A mixin for `nn.Module` heads with `score_thresh`, `nms_thresh`, `detections_per_img`, a `has_mask()`
    method and, when it is true, the modules `mask_roi_pool`, `mask_head` and `mask_predictor` (torchvision's
    attributes, so that the state-dict keys stay torchvision's). The heads define `_detect` (eval detections)
    and `_losses` (training losses), both called by :meth:`forward` with its arguments.
    """

    score_thresh: float
    nms_thresh: float
    detections_per_img: int
    mask_roi_pool: nn.Module | None
    mask_head: nn.Module | None
    mask_predictor: nn.Module | None

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[ImageSize],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Detections (eval) or losses (training), as torchvision's `RoIHeads.forward`.

        Args:
            features: pyramid levels by name.
            proposals: per image, (P_i, 4) float xyxy proposals, canvas pixels.
            image_shapes: per image, (h, w) of the valid region (in eval also an int64 (2,) tensor).
            targets: training only, per image `boxes` float (G_i, 4), int64 `labels` and, with masks, `masks`
                (G_i, H, W).

        Returns:
            (detections, {}) in eval: per image `boxes` float (N, 4) xyxy canvas pixels, `labels` int64 (N,),
            `scores` (N,) (and `masks` float (N, 1, M, M) probabilities); ([], losses) in training, the losses
            the heads' class names.
        """
        if not self.training:
            return self._detect(features, proposals, image_shapes), {}
        if targets is None:
            raise ValueError("targets are required in training mode")
        for i, t in enumerate(targets):
            if t["labels"].dtype != torch.int64:
                raise TypeError(f"targets[{i}]['labels'] must be int64, got {t['labels'].dtype}")
            if self.has_mask() and "masks" not in t:
                raise ValueError(f"targets[{i}] has no 'masks'; the mask branch trains on (G, H, W) masks")
        return [], self._losses(features, proposals, image_shapes, targets)

    def _detections(
        self,
        features: dict[str, Tensor],
        boxes: Sequence[Tensor],
        scores: Sequence[Tensor],
        image_shapes: list[ImageSize],
    ) -> list[dict[str, Tensor]]:
        """Per image, :func:`detections_per_image` of (P_i, K + 1, 4) (or class-agnostic (P_i, 4)) xyxy boxes
        and (P_i, K + 1) scores, with `masks` (N, 1, M, M) probabilities of their labels when the heads have a
        mask branch."""
        result = detections_per_image(
            boxes,
            scores,
            image_shapes,
            score_thresh=self.score_thresh,
            nms_thresh=self.nms_thresh,
            detections_per_img=self.detections_per_img,
        )
        if self.has_mask():
            mask_logits = self._mask_logits(features, [r["boxes"] for r in result], image_shapes)
            probabilities = mask_probabilities(mask_logits, [r["labels"] for r in result])
            for detection, masks in zip(result, probabilities):
                detection["masks"] = masks
        return result

    def _mask_loss(
        self,
        features: dict[str, Tensor],
        rois: list[Tensor],
        positive: list[Tensor],
        matched_idxs: list[Tensor],
        targets: list[dict[str, Tensor]],
        image_shapes: list[ImageSize],
    ) -> Tensor:
        """:func:`mask_loss` of the positive RoIs: per image, `rois` (R_i, 4) xyxy canvas pixels, `positive`
        the int64 indices of those with a foreground label, `matched_idxs` (R_i,) the ground truth each RoI is
        matched to."""
        boxes = [r[i] for r, i in zip(rois, positive)]
        gt_index = [m[i] for m, i in zip(matched_idxs, positive)]
        return mask_loss(
            self._mask_logits(features, boxes, image_shapes),
            boxes,
            [t["masks"] for t in targets],
            [t["labels"] for t in targets],
            gt_index,
        )

    def _mask_logits(
        self, features: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[ImageSize]
    ) -> Tensor:
        return self.mask_predictor(self.mask_head(self.mask_roi_pool(features, boxes, image_shapes)))


class AlignedRoIHeads(RoIHeadsMixin, RoIHeads):
    """torchvision's `RoIHeads` (same constructor, same outputs) whose mask loss uses :func:`mask_targets`.

    Boxes and their losses are torchvision's own methods; the eval post-processing is
    :mod:`vitdense.heads.detection_postprocess`, torchvision's steps in an exportable form. The forward pass
    re-wires them, as torchvision's does, without keypoints.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.has_keypoint():
            raise ValueError(
                "AlignedRoIHeads has no keypoint branch; use torchvision's RoIHeads for keypoints"
            )

    def _losses(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[ImageSize],
        targets: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        """`loss_classifier`, `loss_box_reg` (and `loss_mask`) of RoIs sampled from `proposals`; arguments as
        :meth:`forward`."""
        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        loss_classifier, loss_box_reg = fastrcnn_loss(
            class_logits, box_regression, labels, regression_targets
        )
        losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
        if self.has_mask():
            positive = [torch.where(lab > 0)[0] for lab in labels]
            losses["loss_mask"] = self._mask_loss(
                features, proposals, positive, matched_idxs, targets, image_shapes
            )
        return losses

    def _detect(
        self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[ImageSize]
    ) -> list[dict[str, Tensor]]:
        """Eval detections, post-processed by :mod:`vitdense.heads.detection_postprocess` (torchvision's
        `postprocess_detections` and `maskrcnn_inference`, exportable)."""
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        # `box_coder.decode` without its branch on the box count, which a program cannot take.
        boxes = self.box_coder.decode_single(box_regression, torch.cat(proposals)).unflatten(1, (-1, 4))
        scores = F.softmax(class_logits, -1)
        per_image = [p.shape[0] for p in proposals]
        return self._detections(features, boxes.split(per_image), scores.split(per_image), image_shapes)
