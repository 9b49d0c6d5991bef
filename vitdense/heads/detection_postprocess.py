"""Eval post-processing of the R-CNN detectors, shared by eager inference and `torch.export`.

The steps of torchvision's `RegionProposalNetwork.filter_proposals`, `RoIHeads.postprocess_detections` and
`maskrcnn_inference`, operation for operation, written so that `torch.export` can capture them: image sizes
may be int64 (2,) tensors (program inputs), and every data-dependent count is a tensor size, never a Python
branch. Eager results are bit-identical to torchvision's.

NMS is the one step that runs differently while exporting (`torch.compiler.is_exporting()`). Eagerly it is
`torchvision.ops.batched_nms`, which on the CPU above 1000 boxes runs one NMS per group and otherwise moves
each group's boxes apart by a coordinate offset. A program cannot branch on its box count, so it takes one
form per step: one NMS per pyramid level for the proposals (what the eager CPU runs on any real canvas, which
has thousands of candidates), the coordinate offsets for the detections (what it runs below 1000 candidate
boxes, and the GPU up to 25000). The two forms can differ only where an IoU lies within float rounding of the
threshold.
"""

from collections.abc import Sequence

import torch
import torchvision
from torch import Tensor
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, concat_box_prediction_layers
from torchvision.ops import boxes as box_ops

__all__ = [
    "ImageSize",
    "clip_boxes",
    "detections_per_image",
    "mask_probabilities",
    "propose",
    "select_detections",
    "select_proposals",
]

ImageSize = tuple[int, int] | Tensor
"""(h, w) of an image's valid region: two ints, or an int64 (2,) tensor (a program input under export)."""


def clip_boxes(boxes: Tensor, image_size: ImageSize) -> Tensor:
    """Boxes (..., 4) `[x1, y1, x2, y2]` clipped to `[0, w] x [0, h]`; the values of torchvision's
    `clip_boxes_to_image`, also for a tensor `image_size`."""
    if not isinstance(image_size, Tensor):
        return box_ops.clip_boxes_to_image(boxes, image_size)
    limits = image_size.flip(0).to(boxes.dtype).repeat(2)  # (w, h, w, h)
    return torch.minimum(boxes.clamp(min=0), limits)


def _large_enough(boxes: Tensor, min_size: float) -> Tensor:
    """(N,) bool: both sides of each (N, 4) box are at least `min_size`, as `remove_small_boxes` keeps."""
    return (boxes[:, 2] - boxes[:, 0] >= min_size) & (boxes[:, 3] - boxes[:, 1] >= min_size)


def _nms_per_level(boxes: Tensor, scores: Tensor, levels: Tensor, num_levels: int, iou: float) -> Tensor:
    """Indices of the (N, 4) boxes that NMS within each level keeps, by decreasing score.

    Eagerly `batched_nms`. Exporting: one NMS per level in a loop of known length, as `batched_nms` runs on
    the CPU above 1000 boxes (keep mask, then a sort by score).
    """
    if not torch.compiler.is_exporting():
        return box_ops.batched_nms(boxes, scores, levels, iou)
    kept = torch.zeros_like(scores, dtype=torch.bool)
    for level in range(num_levels):
        index = torch.where(levels == level)[0]
        kept = kept.index_fill(0, index[torchvision.ops.nms(boxes[index], scores[index], iou)], True)
    index = torch.where(kept)[0]
    return index[scores[index].sort(descending=True)[1]]


def _nms_per_class(boxes: Tensor, scores: Tensor, labels: Tensor, iou: float) -> Tensor:
    """Indices of the (N, 4) boxes that NMS within each label keeps, by decreasing score.

    Eagerly `batched_nms`. Exporting: its coordinate-offset form, without its branches on the (symbolic) box
    count; boxes are clipped to >= 0, so the appended 0 changes the offset only for an empty set, where
    `max()` would fail.
    """
    if not torch.compiler.is_exporting():
        return box_ops.batched_nms(boxes, scores, labels, iou)
    max_coordinate = torch.cat([boxes.flatten(), boxes.new_zeros(1)]).max()
    offsets = labels.to(boxes) * (max_coordinate + 1)
    return torchvision.ops.nms(boxes + offsets[:, None], scores, iou)


def select_proposals(
    proposals: Tensor,
    objectness: Tensor,
    num_anchors_per_level: Sequence[int],
    image_sizes: Sequence[ImageSize],
    *,
    pre_nms_top_n: int,
    post_nms_top_n: int,
    min_size: float,
    score_thresh: float,
    nms_thresh: float,
) -> tuple[list[Tensor], list[Tensor]]:
    """The eval RPN's proposals, as torchvision's `RegionProposalNetwork.filter_proposals`.

    Per image: the `pre_nms_top_n` highest objectness logits of each level, their boxes clipped to the valid
    region, boxes with a side under `min_size` and probabilities under `score_thresh` dropped, NMS within
    each level, the `post_nms_top_n` best kept.

    Args:
        proposals: (B, A, 4) float `[x1, y1, x2, y2]` decoded anchor boxes, canvas pixels, levels in order.
        objectness: (B, A) or (B * A, 1) logits.
        num_anchors_per_level: anchors of each level, summing to A.
        image_sizes: per image, (h, w) of the valid region.

    Returns:
        Per image, (P_i, 4) boxes and (P_i,) objectness probabilities, by decreasing probability.
    """
    num_images = proposals.shape[0]
    objectness = objectness.detach().reshape(num_images, -1)
    device = proposals.device
    levels = torch.cat(
        [torch.full((n,), k, dtype=torch.int64, device=device) for k, n in enumerate(num_anchors_per_level)]
    )
    top_n_index, offset = [], 0
    for level_objectness in objectness.split(list(num_anchors_per_level), 1):
        count = level_objectness.shape[1]
        top_n_index.append(level_objectness.topk(min(pre_nms_top_n, count), dim=1)[1] + offset)
        offset += count
    index = torch.cat(top_n_index, dim=1)
    batch = torch.arange(num_images, device=device)[:, None]
    probabilities = objectness[batch, index].sigmoid()
    levels, proposals = levels[index], proposals[batch, index]

    all_boxes, all_scores = [], []
    for boxes, scores, level, image_size in zip(proposals, probabilities, levels, image_sizes):
        boxes = clip_boxes(boxes, image_size)
        keep = torch.where(_large_enough(boxes, min_size))[0]
        boxes, scores, level = boxes[keep], scores[keep], level[keep]
        keep = torch.where(scores >= score_thresh)[0]
        boxes, scores, level = boxes[keep], scores[keep], level[keep]
        keep = _nms_per_level(boxes, scores, level, len(num_anchors_per_level), nms_thresh)[:post_nms_top_n]
        all_boxes.append(boxes[keep])
        all_scores.append(scores[keep])
    return all_boxes, all_scores


def propose(
    rpn: RegionProposalNetwork, images: Tensor, features: dict[str, Tensor], image_sizes: Sequence[ImageSize]
) -> list[Tensor]:
    """Eval proposals of a torchvision `RegionProposalNetwork`: what its `forward` returns in eval mode.

    Args:
        rpn: the network, in eval mode (its test-time top-n).
        images: (B, 3, H, W) canvas the features were computed from.
        features: pyramid levels by name, each (B, C, H / s, W / s); the RPN uses all of them.
        image_sizes: per image, (h, w) of the valid region.

    Returns:
        Per image, (P_i, 4) float `[x1, y1, x2, y2]` proposals, canvas pixels, by decreasing objectness.
    """
    maps = list(features.values())
    objectness, deltas = rpn.head(maps)
    num_anchors_per_level = [o[0].numel() for o in objectness]
    canvas = (images.shape[-2], images.shape[-1])
    anchors = rpn.anchor_generator(ImageList(images, [canvas] * images.shape[0]), maps)
    objectness, deltas = concat_box_prediction_layers(objectness, deltas)
    proposals = rpn.box_coder.decode(deltas.detach(), anchors).view(len(anchors), -1, 4)
    boxes, _ = select_proposals(
        proposals,
        objectness,
        num_anchors_per_level,
        image_sizes,
        pre_nms_top_n=rpn.pre_nms_top_n(),
        post_nms_top_n=rpn.post_nms_top_n(),
        min_size=rpn.min_size,
        score_thresh=rpn.score_thresh,
        nms_thresh=rpn.nms_thresh,
    )
    return boxes


def select_detections(
    boxes: Tensor,
    scores: Tensor,
    image_size: ImageSize,
    *,
    score_thresh: float,
    nms_thresh: float,
    detections_per_img: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """One image's detections, as torchvision's `RoIHeads.postprocess_detections`.

    Every (RoI, foreground class) pair is a candidate: candidates scoring at or below `score_thresh` and
    boxes with a side under 0.01 px are dropped, NMS runs per class, the `detections_per_img` best are kept.

    Args:
        boxes: (P, K + 1, 4) float `[x1, y1, x2, y2]` per-class boxes, canvas pixels, or (P, 4)
            class-agnostic ones (each stands for every class).
        scores: (P, K + 1) class probabilities, background first.
        image_size: (h, w) of the valid region; boxes are clipped to it.

    Returns:
        (D, 4) boxes, (D,) scores and (D,) int64 labels in 1..K, by decreasing score, D <= detections_per_img.
    """
    num_classes = scores.shape[1]
    if boxes.dim() == 2:
        boxes = boxes[:, None].expand(-1, num_classes, -1)
    boxes = clip_boxes(boxes, image_size)
    labels = torch.arange(num_classes, device=scores.device).view(1, -1).expand_as(scores)
    # Background dropped; every class prediction a separate candidate.
    boxes, scores, labels = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
    keep = torch.where(scores > score_thresh)[0]
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = torch.where(_large_enough(boxes, 1e-2))[0]
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = _nms_per_class(boxes, scores, labels, nms_thresh)[:detections_per_img]
    return boxes[keep], scores[keep], labels[keep]


def detections_per_image(
    boxes: Sequence[Tensor],
    scores: Sequence[Tensor],
    image_sizes: Sequence[ImageSize],
    *,
    score_thresh: float,
    nms_thresh: float,
    detections_per_img: int,
) -> list[dict[str, Tensor]]:
    """:func:`select_detections` of each image: ``{"boxes", "labels", "scores"}`` per image."""
    result = []
    for b, s, image_size in zip(boxes, scores, image_sizes, strict=True):
        b, s, labels = select_detections(
            b,
            s,
            image_size,
            score_thresh=score_thresh,
            nms_thresh=nms_thresh,
            detections_per_img=detections_per_img,
        )
        result.append({"boxes": b, "labels": labels, "scores": s})
    return result


def mask_probabilities(mask_logits: Tensor, labels: Sequence[Tensor]) -> list[Tensor]:
    """Each detection's mask probabilities for its own class, as torchvision's `maskrcnn_inference`.

    Args:
        mask_logits: (N, K + 1, M, M) logits of all images' detections, concatenated.
        labels: per image, (N_i,) int64 labels of its detections.

    Returns:
        Per image, (N_i, 1, M, M) float probabilities.
    """
    probabilities = mask_logits.sigmoid()
    labels_all = torch.cat(list(labels))
    chosen = probabilities[torch.arange(labels_all.shape[0], device=labels_all.device), labels_all][:, None]
    return list(chosen.split([label.shape[0] for label in labels]))
