"""Cascade R-CNN box heads with a Mask R-CNN branch, as detectron2's `CascadeROIHeads` (Cai & Vasconcelos).

A sequence of box stages, each with its own head, class-agnostic regression, IoU threshold and box-coder
weights, refines the RPN's proposals one after another; ViTDet uses 3 stages at IoU 0.5, 0.6, 0.7 with weights
(10, 10, 5, 5), (20, 20, 10, 10), (30, 30, 15, 15). What detectron2 does
(`modeling/roi_heads/cascade_rcnn.py`), and so this module:

* Training: the ground-truth boxes are added to the RPN's proposals and 512 RoIs per image (at most 25 %
  positive) are sampled once, matched at the first stage's threshold. Every later stage takes all the RoIs of
  the stage before, moved by that stage's regression (detached, clipped to the image, empty boxes dropped),
  and matches them at its own threshold: no ground truth is added again and nothing is resampled.
* Each stage's pooled features pass their gradient back scaled by 1 / number of stages: detectron2's
  equivalent of the original's averaged stage losses, which keeps the heads' own gradients at full strength.
* The mask head trains on the first stage's sampled positives (IoU >= 0.5: the RoIs Mask R-CNN's mask head
  trains on) and in evaluation runs on the final detections.
* Evaluation: class scores are the mean of the stages' softmax scores, boxes the last stage's regression of
  its RoIs; then torchvision's `RoIHeads.postprocess_detections` steps (score threshold, per-class NMS,
  top-k; :func:`vitdense.heads.detection_postprocess.select_detections`), with the class-agnostic box
  standing for every class.

The losses are torchvision's `fastrcnn_loss` (cross-entropy; smooth L1 with beta 1/9 over the positives,
divided by the number of RoIs), as in :class:`AlignedRoIHeads`; detectron2's ViTDet uses L1. Host
synchronisations in training: one per stage to pick its RoIs (for the whole batch, where torchvision's heads
wait once per image), one per pooled level and stage, one for the mask branch's positives; evaluation's
post-processing synchronises per image, as torchvision's.
"""

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import boxes as box_ops

from vitdense.heads.box_coder import DeviceBoxCoder
from vitdense.heads.detection_postprocess import ImageSize, clip_boxes
from vitdense.heads.matcher import SyncFreeMatcher
from vitdense.heads.roi_heads import RoIHeadsMixin
from vitdense.heads.sampler import SyncFreeSampler

__all__ = [
    "CascadeRoIHeads",
    "CascadeStage",
    "ClassAgnosticBoxPredictor",
    "StageOutput",
    "cascade_stage_loss",
    "scale_gradient",
]


class _ScaleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        return grad_output * ctx.scale, None


def scale_gradient(x: Tensor, scale: float) -> Tensor:
    """`x` unchanged in the forward pass; its gradient multiplied by `scale` in the backward pass."""
    return _ScaleGradient.apply(x, scale)


def _indices_where(masks: list[Tensor]) -> list[Tensor]:
    """Per image, the ascending indices where the bool mask (N_i,) is true, as `torch.where(mask)[0]`.

    `torch.where` makes the host wait for the device once per image; here the batch's counts are read once and
    each image's indices come from a stable sort (true first, in order), cut at its count.
    """
    if not masks:
        return []
    counts = torch.stack([mask.sum() for mask in masks]).tolist()
    return [torch.argsort((~mask).to(torch.uint8), stable=True)[:count] for mask, count in zip(masks, counts)]


class ClassAgnosticBoxPredictor(nn.Module):
    """Class scores and one box regression shared by all classes (detectron2's `cls_agnostic_bbox_reg`).

    Initialised as detectron2's `FastRCNNOutputLayers`: weights N(0, 0.01) (scores) and N(0, 0.001) (deltas),
    zero biases, so that a new stage passes its RoIs on almost unmoved.

    Args:
        in_channels: width of the box head's output.
        num_classes: classes including background (K + 1).
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        for layer in (self.cls_score, self.bbox_pred):
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(R, C) or (R, C, 1, 1) features -> class logits (R, K + 1) and box deltas (R, 4)."""
        x = x.flatten(start_dim=1)
        return self.cls_score(x), self.bbox_pred(x)


class CascadeStage(nn.Module):
    """One cascade stage: its box head and predictor, and the matcher and box coder that define its targets.

    Args:
        box_head: pooled (R, C, 7, 7) features -> (R, D) (e.g. torchvision's `FastRCNNConvFCHead`).
        box_predictor: (R, D) -> class logits (R, K + 1) and class-agnostic deltas (R, 4).
        box_coder: encodes regression targets and decodes deltas with this stage's weights.
        proposal_matcher: matches RoIs to ground truth at this stage's IoU threshold; no ignored band and no
            low-quality matches (`high_threshold == low_threshold`, as detectron2's `Matcher([iou], [0, 1])`).
    """

    def __init__(
        self,
        box_head: nn.Module,
        box_predictor: nn.Module,
        box_coder: DeviceBoxCoder,
        proposal_matcher: SyncFreeMatcher,
    ) -> None:
        super().__init__()
        if (
            proposal_matcher.high_threshold != proposal_matcher.low_threshold
            or proposal_matcher.allow_low_quality_matches
        ):
            raise ValueError(
                "a cascade stage's matcher must label every RoI foreground or background (later stages are "
                "not sampled, so nothing would drop ignored RoIs): got thresholds "
                f"({proposal_matcher.high_threshold}, {proposal_matcher.low_threshold}) and "
                f"allow_low_quality_matches={proposal_matcher.allow_low_quality_matches}; use "
                "SyncFreeMatcher(iou, iou, False)"
            )
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.box_coder = box_coder
        self.proposal_matcher = proposal_matcher

    def forward(self, box_features: Tensor) -> tuple[Tensor, Tensor]:
        """Pooled (R, C, h, w) features -> class logits (R, K + 1) and box deltas (R, 4)."""
        return self.box_predictor(self.box_head(box_features))

    def match(
        self, proposals: list[Tensor], gt_boxes: list[Tensor], gt_labels: list[Tensor]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Per image, each RoI's ground-truth index (0 where there is none) and class (0: background).

        Args:
            proposals: per image, (P_i, 4) float xyxy RoIs, canvas pixels.
            gt_boxes: per image, (G_i, 4) float xyxy ground truth, canvas pixels.
            gt_labels: per image, (G_i,) int64 classes in 1..K.

        Returns:
            (matched_idxs, labels): per image, (P_i,) int64 each. An RoI is foreground when its best IoU
            reaches the threshold, as in torchvision's `RoIHeads.assign_targets_to_proposals`.
        """
        matched_idxs, labels = [], []
        for rois, boxes, classes in zip(proposals, gt_boxes, gt_labels):
            if boxes.shape[0] == 0 or rois.shape[0] == 0:
                none = torch.zeros(rois.shape[0], dtype=torch.int64, device=rois.device)
                matched_idxs.append(none)
                labels.append(none)
                continue
            matches = self.proposal_matcher(box_ops.box_iou(boxes, rois))
            clamped = matches.clamp(min=0)
            matched_idxs.append(clamped)
            labels.append(torch.where(matches < 0, 0, classes[clamped].to(torch.int64)))
        return matched_idxs, labels

    def regression_targets(
        self, proposals: list[Tensor], gt_boxes: list[Tensor], matched_idxs: list[Tensor]
    ) -> Tensor:
        """(sum P_i, 4) deltas from each RoI to its matched ground truth, with this stage's weights (only the
        foreground rows are meaningful; an image without ground truth is encoded against a zero box, as
        torchvision does)."""
        matched = [
            (boxes if boxes.shape[0] else boxes.new_zeros(1, 4))[idxs]
            for boxes, idxs in zip(gt_boxes, matched_idxs)
        ]
        return self.box_coder.encode_single(torch.cat(matched), torch.cat(proposals))

    def decode(
        self, box_deltas: Tensor, proposals: list[Tensor], image_shapes: list[ImageSize]
    ) -> list[Tensor]:
        """Per image, (P_i, 4) float32 xyxy boxes: `box_deltas` (sum P_i, 4) applied to `proposals`, clipped
        to the image's valid region (h, w)."""
        boxes = self.box_coder.decode_single(box_deltas, torch.cat(proposals))
        per_image = boxes.split([p.shape[0] for p in proposals])
        return [clip_boxes(b, shape) for b, shape in zip(per_image, image_shapes)]


class StageOutput(NamedTuple):
    """What one stage pooled and predicted; the targets are set in training only.

    Attributes:
        proposals: per image, (P_i, 4) float xyxy RoIs the stage pooled, canvas pixels (no gradient).
        class_logits: (sum P_i, K + 1).
        box_deltas: (sum P_i, 4) class-agnostic deltas, in the stage's box-coder weights.
        labels: per image, (P_i,) int64 matched class, 0 for background.
        matched_idxs: per image, (P_i,) int64 index of the matched ground truth (0 for background).
        regression_targets: (sum P_i, 4) deltas to the matched ground truth.
    """

    proposals: list[Tensor]
    class_logits: Tensor
    box_deltas: Tensor
    labels: list[Tensor] | None = None
    matched_idxs: list[Tensor] | None = None
    regression_targets: Tensor | None = None


def cascade_stage_loss(
    class_logits: Tensor, box_deltas: Tensor, labels: list[Tensor], regression_targets: Tensor
) -> tuple[Tensor, Tensor]:
    """torchvision's `fastrcnn_loss` for class-agnostic deltas: cross-entropy over all RoIs, and smooth L1
    (beta 1/9) summed over the foreground RoIs and divided by the number of RoIs.

    Args:
        class_logits: (R, K + 1).
        box_deltas: (R, 4).
        labels: per image, int64 classes of the R RoIs (0: background).
        regression_targets: (R, 4) float.

    Returns:
        (classification loss, box loss), scalars; zero (still connected to the inputs) when R is 0.
    """
    labels = torch.cat(labels)
    if labels.numel() == 0:
        return class_logits.sum() * 0, box_deltas.sum() * 0
    classification = F.cross_entropy(class_logits.float(), labels)
    per_coordinate = F.smooth_l1_loss(box_deltas.float(), regression_targets, beta=1 / 9, reduction="none")
    # Selected with `where`, not indexing, so that the host need not learn how many RoIs are foreground.
    box = torch.where((labels > 0)[:, None], per_coordinate, 0.0).sum() / labels.numel()
    return classification, box


class CascadeRoIHeads(RoIHeadsMixin, nn.Module):
    """Cascade R-CNN box stages over one shared RoI pooler, with an optional Mask R-CNN branch.

    Drop-in for the RoI heads of :class:`RCNNDetector`: same call, same outputs, `has_mask()`.

    Args:
        box_roi_pool: pools (R, C, 7, 7) from the pyramid, `(features, boxes, image_shapes)` like
            `ExactMultiScaleRoIAlign`; shared by the stages.
        stages: the cascade stages, first to last.
        fg_bg_sampler: samples the first stage's RoIs among the proposals and ground-truth boxes.
        score_thresh: eval: drop detections whose mean score is at or below this.
        nms_thresh: eval: per-class NMS IoU threshold.
        detections_per_img: eval: keep at most this many detections per image.
        mask_roi_pool: pools (R, C, 14, 14) for the mask head; with `mask_head` and `mask_predictor`, or none.
        mask_head: (R, C, 14, 14) -> (R, D, 14, 14).
        mask_predictor: (R, D, 14, 14) -> (R, K + 1, 28, 28) logits.
    """

    def __init__(
        self,
        box_roi_pool: nn.Module,
        stages: Sequence[CascadeStage],
        fg_bg_sampler: SyncFreeSampler,
        score_thresh: float,
        nms_thresh: float,
        detections_per_img: int,
        mask_roi_pool: nn.Module | None = None,
        mask_head: nn.Module | None = None,
        mask_predictor: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if not stages:
            raise ValueError("a cascade needs at least one stage")
        mask_parts = (mask_roi_pool, mask_head, mask_predictor)
        if any(p is None for p in mask_parts) and any(p is not None for p in mask_parts):
            raise ValueError("give all of mask_roi_pool, mask_head and mask_predictor, or none of them")
        self.box_roi_pool = box_roi_pool
        self.stages = nn.ModuleList(stages)
        self.fg_bg_sampler = fg_bg_sampler
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.mask_roi_pool = mask_roi_pool
        self.mask_head = mask_head
        self.mask_predictor = mask_predictor

    def has_mask(self) -> bool:
        """Whether the heads have a mask branch (and eval detections carry `masks`)."""
        return self.mask_roi_pool is not None

    def _losses(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[ImageSize],
        targets: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        """`loss_classifier_stage{k}` and `loss_box_reg_stage{k}` for k = 0, 1, ... (and `loss_mask`);
        arguments as :meth:`forward`."""
        outputs = self.forward_stages(features, proposals, image_shapes, targets)
        losses = {}
        for k, out in enumerate(outputs):
            classification, box = cascade_stage_loss(
                out.class_logits, out.box_deltas, out.labels, out.regression_targets
            )
            losses[f"loss_classifier_stage{k}"] = classification
            losses[f"loss_box_reg_stage{k}"] = box
        if self.has_mask():
            first = outputs[0]
            positive = _indices_where([labels > 0 for labels in first.labels])
            losses["loss_mask"] = self._mask_loss(
                features, first.proposals, positive, first.matched_idxs, targets, image_shapes
            )
        return losses

    def forward_stages(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[ImageSize],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> list[StageOutput]:
        """Run every stage on the RoIs of the stage before (the first on the RPN's proposals).

        Args: as :meth:`forward`; `targets` are required in training and unused in eval.

        Returns:
            One :class:`StageOutput` per stage. In training the first stage's RoIs are the sampled proposals
            and ground-truth boxes, and every output carries its stage's labels and regression targets. In
            eval the first stage's RoIs are all proposals and no later stage drops any, so that rows line up
            across stages.
        """
        gt_boxes, gt_labels, labels, matched_idxs, regression_targets = [], [], None, None, None
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            gt_boxes = [t["boxes"].to(proposals[0].dtype) for t in targets]
            gt_labels = [t["labels"] for t in targets]
            proposals, matched_idxs, labels = self._sample(proposals, gt_boxes, gt_labels)
        outputs: list[StageOutput] = []
        for k, stage in enumerate(self.stages):
            if k > 0:
                previous = outputs[-1]
                proposals = self._next_proposals(self.stages[k - 1], previous, image_shapes)
                if self.training:
                    matched_idxs, labels = stage.match(proposals, gt_boxes, gt_labels)
            box_features = self.box_roi_pool(features, proposals, image_shapes)
            if self.training:
                box_features = scale_gradient(box_features, 1.0 / len(self.stages))
            class_logits, box_deltas = stage(box_features)
            if self.training:
                regression_targets = stage.regression_targets(proposals, gt_boxes, matched_idxs)
            outputs.append(
                StageOutput(proposals, class_logits, box_deltas, labels, matched_idxs, regression_targets)
            )
        return outputs

    def _sample(
        self, proposals: list[Tensor], gt_boxes: list[Tensor], gt_labels: list[Tensor]
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """The first stage's RoIs, as torchvision's `RoIHeads.select_training_samples`: ground truth added to
        the proposals, matched at the first stage's threshold, then sampled. Returns per image (RoIs, matched
        ground-truth index, label)."""
        proposals = [torch.cat((p, g)) for p, g in zip(proposals, gt_boxes)]
        matched_idxs, labels = self.stages[0].match(proposals, gt_boxes, gt_labels)
        positive, negative = self.fg_bg_sampler(labels)
        sampled = _indices_where([(pos | neg).bool() for pos, neg in zip(positive, negative)])
        return (
            [p[i] for p, i in zip(proposals, sampled)],
            [m[i] for m, i in zip(matched_idxs, sampled)],
            [lab[i] for lab, i in zip(labels, sampled)],
        )

    def _next_proposals(
        self, stage: CascadeStage, output: StageOutput, image_shapes: list[ImageSize]
    ) -> list[Tensor]:
        """`stage`'s boxes for its RoIs, detached and clipped; in training, boxes with no area are dropped
        (detectron2 keeps them in eval, where every stage must score the same RoIs)."""
        boxes = stage.decode(output.box_deltas.detach(), output.proposals, image_shapes)
        if not self.training:
            return boxes
        kept = _indices_where([((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])) for b in boxes])
        return [b[i] for b, i in zip(boxes, kept)]

    def _detect(
        self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[ImageSize]
    ) -> list[dict[str, Tensor]]:
        outputs = self.forward_stages(features, proposals, image_shapes)
        scores = torch.stack([F.softmax(out.class_logits.float(), dim=-1) for out in outputs]).mean(dim=0)
        last = outputs[-1]
        boxes = self.stages[-1].decode(last.box_deltas, last.proposals, image_shapes)
        # The class-agnostic box stands for every class, as torchvision's post-processing of repeated boxes.
        return self._detections(features, boxes, scores.split([b.shape[0] for b in boxes]), image_shapes)
