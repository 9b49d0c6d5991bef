"""Batch collation for detection and semantic segmentation samples."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["collate_detection", "collate_segmentation"]


def _present_samples(
    batch: list[tuple[torch.Tensor, dict[str, Any]] | None], collate: str
) -> list[tuple[torch.Tensor, dict[str, Any]]] | None:
    """The samples of ``batch`` that are not None; None when all are (a batch of skipped records)."""
    if batch and all(sample is None for sample in batch):
        return None
    samples = [sample for sample in batch if sample is not None]
    if not samples:
        raise ValueError(f"{collate}: got an empty batch")
    return samples


def _padded_images(images: list[torch.Tensor], size_divisibility: int) -> torch.Tensor:
    """(C, h_i, w_i) images top-left on one zero (B, C, H, W) canvas, H and W rounded up to
    ``size_divisibility``."""
    max_h = max(image.shape[-2] for image in images)
    max_w = max(image.shape[-1] for image in images)
    h = -(-max_h // size_divisibility) * size_divisibility
    w = -(-max_w // size_divisibility) * size_divisibility
    out = images[0].new_zeros((len(images), images[0].shape[0], h, w))
    for i, image in enumerate(images):
        out[i, :, : image.shape[-2], : image.shape[-1]] = image
    return out


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
    samples = _present_samples(batch, "collate_detection")
    if samples is None:
        return None
    out = _padded_images([image for image, _ in samples], size_divisibility)
    h, w = out.shape[-2:]
    targets = []
    for _, target in samples:
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
    samples = _present_samples(batch, "collate_segmentation")
    if samples is None:
        return None
    if size_divisibility < 1:
        raise ValueError(f"collate_segmentation: size_divisibility={size_divisibility} must be >= 1")
    images = _padded_images([image for image, _ in samples], size_divisibility)
    return images, [target for _, target in samples]
