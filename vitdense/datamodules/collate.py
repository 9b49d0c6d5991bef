"""Batch collation for detection and semantic segmentation samples."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["collate_detection", "collate_segmentation"]


def collate_detection(
    batch: list[tuple[torch.Tensor, dict[str, Any]] | None], size_divisibility: int = 56
) -> tuple[torch.Tensor, list[dict[str, Any]]] | None:
    """Stack images into one padded batch and keep targets as a list.

    Args:
        batch: ``(image, target)`` pairs; ``image`` is ``uint8`` ``(3, H_i, W_i)``. None entries (evaluation
            records skipped as bad, see :class:`~vitdense.datamodules.bad_data.CheckedDataset`) are dropped;
            a batch of them only is None, which the tasks' evaluation steps pass over.
        size_divisibility: the batch height and width are the largest ``H_i``/``W_i`` rounded up to a
            multiple of this (56 = 4 x the ViT patch 14, so every pyramid level has integer size).

    Returns:
        ``images``: ``uint8`` ``(B, 3, H, W)``, each image top-left with zero padding bottom/right;
        ``targets``: the per-sample dicts, with ``"masks"`` (if any) zero padded to ``(N, H, W)``.
    """
    if batch and all(sample is None for sample in batch):
        return None
    batch = [sample for sample in batch if sample is not None]
    if not batch:
        raise ValueError("collate_detection: got an empty batch")
    images = [image for image, _ in batch]
    max_h = max(image.shape[-2] for image in images)
    max_w = max(image.shape[-1] for image in images)
    h = -(-max_h // size_divisibility) * size_divisibility
    w = -(-max_w // size_divisibility) * size_divisibility
    out = images[0].new_zeros((len(images), images[0].shape[0], h, w))
    targets = []
    for i, (image, target) in enumerate(batch):
        out[i, :, : image.shape[-2], : image.shape[-1]] = image
        masks = target.get("masks")
        if masks is not None and masks.shape[-2:] != (h, w):
            target = {**target, "masks": F.pad(masks, (0, w - masks.shape[-1], 0, h - masks.shape[-2]))}
        targets.append(target)
    return out, targets


def collate_segmentation(
    batch: list[tuple[torch.Tensor, dict[str, Any]] | None], size_divisibility: int = 14
) -> tuple[torch.Tensor, list[dict[str, Any]]] | None:
    """Pad images into one batch and keep targets as a list (labels are not stacked or padded).

    Training labels are all ``(C, C)`` and the task stacks them; evaluation labels stay at each image's
    original resolution, so they cannot be stacked.

    Args:
        batch: ``(image, target)`` pairs; ``image`` is ``uint8`` ``(3, h_i, w_i)``; None entries are dropped
            as in :func:`collate_detection`.
        size_divisibility: the batch height and width are the largest ``h_i``/``w_i`` rounded up to a
            multiple of this (14, the ViT patch).

    Returns:
        ``images``: ``uint8`` ``(B, 3, H, W)``, each image top-left with zero padding bottom/right;
        ``targets``: the per-sample dicts, unchanged.
    """
    if batch and all(sample is None for sample in batch):
        return None
    batch = [sample for sample in batch if sample is not None]
    if not batch:
        raise ValueError("collate_segmentation: got an empty batch")
    if size_divisibility < 1:
        raise ValueError(f"collate_segmentation: size_divisibility={size_divisibility} must be >= 1")
    images = [image for image, _ in batch]
    max_h = max(image.shape[-2] for image in images)
    max_w = max(image.shape[-1] for image in images)
    h = -(-max_h // size_divisibility) * size_divisibility
    w = -(-max_w // size_divisibility) * size_divisibility
    out = images[0].new_zeros((len(images), images[0].shape[0], h, w))
    for i, image in enumerate(images):
        out[i, :, : image.shape[-2], : image.shape[-1]] = image
    return out, [target for _, target in batch]
