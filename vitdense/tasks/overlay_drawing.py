"""Predictions drawn on their images, whole images at a time: detection overlays and tinted label maps.

The pixels are those of torchvision's ``draw_segmentation_masks`` then ``draw_bounding_boxes`` (a pixel under
one mask takes its colour, under several black, blended in float32 and truncated), without their cost on a
photo with many detections: torchvision sums every mask over the whole image and paints each mask through a
full-image index, 100 full-image passes per image. Here each mask is painted from its bounding region
(:class:`~vitdense.datamodules.instance_masks.InstanceMasks`, which the JSON's RLEs are written from too)
into one index image (which mask is over each pixel, or several), the image is blended once by table lookups
that hold the float32 blend's results, and boxes and captions go on one PIL canvas.
"""

import colorsys
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from vitdense.datamodules.instance_masks import InstanceMasks, mask_regions

__all__ = ["class_colors", "detection_overlay", "draw_detections", "draw_label_map", "label_map_overlay"]


def class_colors(num_colors: int) -> list[tuple[int, int, int]]:
    """Distinct, deterministic colours: hues spaced by the golden ratio, alternating in brightness."""
    colors = []
    for index in range(num_colors):
        hue = (index * 0.618033988749895) % 1.0
        value = 0.95 if index % 2 == 0 else 0.75
        red, green, blue = colorsys.hsv_to_rgb(hue, 0.85, value)
        colors.append((round(255 * red), round(255 * green), round(255 * blue)))
    return colors


def draw_detections(
    image: Tensor,
    boxes: Tensor,
    labels: Tensor,
    scores: Tensor,
    class_names: Sequence[str],
    *,
    masks: Tensor | None = None,
    score_threshold: float = 0.5,
    mask_alpha: float = 0.45,
) -> Tensor:
    """Masks, boxes and ``name score`` captions of the detections scoring at least ``score_threshold``.

    Args:
        image: uint8 (3, H, W).
        boxes: (N, 4) xyxy pixels of ``image``.
        labels: (N,) in 1..K (``class_names[label - 1]``; colours follow the label).
        scores: (N,).
        class_names: K names.
        masks: bool (N, H, W), or None.
        score_threshold: detections below it are not drawn.
        mask_alpha: mask opacity.

    Returns:
        uint8 (3, H, W).
    """
    pixels = np.ascontiguousarray(image.cpu().permute(1, 2, 0).numpy())
    drawn = detection_overlay(
        pixels,
        boxes,
        labels,
        scores,
        class_names,
        masks=mask_regions(masks) if masks is not None else None,
        score_threshold=score_threshold,
        mask_alpha=mask_alpha,
    )
    return torch.from_numpy(drawn).permute(2, 0, 1).contiguous()


def detection_overlay(
    pixels: np.ndarray,
    boxes: Tensor,
    labels: Tensor,
    scores: Tensor,
    class_names: Sequence[str],
    *,
    masks: InstanceMasks | None = None,
    score_threshold: float = 0.5,
    mask_alpha: float = 0.45,
) -> np.ndarray:
    """:func:`draw_detections` on uint8 (H, W, 3) ``pixels``, as images are read and saved, with the masks
    as their regions (:func:`~vitdense.datamodules.instance_masks.mask_regions`); returns a new uint8
    (H, W, 3) array."""
    keep = (scores >= score_threshold).cpu()
    boxes, labels, scores = boxes.cpu()[keep].float(), labels.cpu()[keep], scores.cpu()[keep]
    if not len(boxes):
        return pixels.copy()
    palette = class_colors(len(class_names) + 1)
    colors = [palette[int(label)] for label in labels]
    if masks is not None:
        painted = _painted_masks(masks, np.flatnonzero(keep.numpy()))
        pixels = _blend(pixels, painted, colors, mask_alpha)
    canvas = Image.fromarray(pixels)
    draw = ImageDraw.Draw(canvas)
    width = max(1, round(max(pixels.shape[:2]) / 300))
    # As torchvision's draw_bounding_boxes: corners truncated to integers, all boxes before any caption.
    for box, color in zip(boxes.to(torch.int64).tolist(), colors):
        draw.rectangle(box, width=width, outline=color)
    captions = [f"{class_names[int(label) - 1]} {float(score):.2f}" for label, score in zip(labels, scores)]
    _draw_captions(draw, canvas.size, boxes, captions, colors, max(10, round(min(pixels.shape[:2]) / 45)))
    return np.array(canvas)


def _painted_masks(masks: InstanceMasks, indices: np.ndarray) -> np.ndarray:
    """Which of the masks at ``indices`` lies over each pixel: (H, W) unsigned, 0 under none, k under mask
    ``indices[k - 1]`` alone, ``len(indices) + 1`` under several. Each is painted over its region only."""
    several = len(indices) + 1
    dtype = np.uint8 if several <= np.iinfo(np.uint8).max else np.uint32
    painted = np.zeros((masks.height, masks.width), dtype)
    for k, index in enumerate(indices, start=1):
        crop = masks.crops[index] != 0
        if not crop.size:
            continue
        x, y = (int(v) for v in masks.origins[index])
        extent = painted[y : y + crop.shape[0], x : x + crop.shape[1]]
        under_another = crop & (extent != 0)
        np.copyto(extent, k, where=crop)
        np.copyto(extent, several, where=under_another)
    return painted


def _blend(
    pixels: np.ndarray, painted: np.ndarray, colors: list[tuple[int, int, int]], alpha: float
) -> np.ndarray:
    """uint8 (H, W, 3) ``pixels`` with, where the (H, W) index ``painted`` is k > 0, ``colors[k - 1]`` blended
    in (black past the last colour), as torchvision does it: ``pixel * (1 - alpha) + colour * alpha`` in
    float32, truncated, over every pixel (an uncovered pixel can lose 1 to the float rounding, as it does
    there).

    The result of a channel depends only on its value and the colour over it, so each channel is looked up in
    a table computed by those float32 operations over all 256 values, (colours + 2) x 256 entries, instead of
    blending the image's millions of values in float32.
    """
    values = np.arange(256, dtype=np.float32)
    over = np.array([(0, 0, 0), *colors, (0, 0, 0)], np.float32).T[..., None]  # (3, K + 2, 1)
    table = values * np.float32(1 - alpha) + over * np.float32(alpha)
    # Row 0, uncovered: blended with itself.
    table[:, 0] = values * np.float32(1 - alpha) + values * np.float32(alpha)
    table = table.astype(np.uint8).reshape(3, -1)
    row = painted.astype(np.intp) << 8
    blended = np.empty_like(pixels)
    for channel in range(3):
        blended[..., channel] = table[channel][row | pixels[..., channel]]
    return blended


def _draw_captions(
    draw: ImageDraw.ImageDraw,
    size: tuple[int, int],
    boxes: Tensor,
    captions: list[str],
    colors: list[tuple[int, int, int]],
    text_size: int,
) -> None:
    """Each caption in a box of its colour at the top left of its box, in text ``text_size`` pixels high, so
    that it reads on a 12 MP photo as on a thumbnail (torchvision's default font is 10 px at any size).
    Pillow's own font has Latin letters only: other scripts show as empty boxes, as with torchvision's.
    ``size`` is the canvas's (width, height)."""
    font = ImageFont.load_default(size=text_size)
    margin = max(1, text_size // 8)
    canvas_width, canvas_height = size
    for (x1, y1, _, _), caption, color in zip(boxes.tolist(), captions, colors):
        left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
        # At the box's top left, moved inside the image where the box touches its right or bottom edge.
        x = max(margin, min(x1, canvas_width - right - margin))
        y = max(margin - top, min(y1, canvas_height - bottom - margin))
        draw.rectangle(
            (x + left - margin, y + top - margin, x + right + margin, y + bottom + margin), fill=color
        )
        dark = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2] < 128
        draw.text((x, y), caption, fill=(255, 255, 255) if dark else (0, 0, 0), font=font)


def draw_label_map(image: Tensor, label_map: Tensor, num_classes: int, *, alpha: float = 0.5) -> Tensor:
    """``image`` with every pixel tinted by its class colour (values outside 0..K-1 are left untinted).

    Args:
        image: uint8 (3, H, W).
        label_map: integer (H, W) class indices.
        num_classes: K.
        alpha: tint opacity.

    Returns:
        uint8 (3, H, W).
    """
    pixels = np.ascontiguousarray(image.cpu().permute(1, 2, 0).numpy())
    drawn = label_map_overlay(pixels, label_map, num_classes, alpha=alpha)
    return torch.from_numpy(drawn).permute(2, 0, 1).contiguous()


def label_map_overlay(
    pixels: np.ndarray, label_map: Tensor, num_classes: int, *, alpha: float = 0.5
) -> np.ndarray:
    """:func:`draw_label_map` on uint8 (H, W, 3) ``pixels``; returns a new uint8 (H, W, 3) array."""
    labels = label_map.cpu().numpy()
    covered = (labels >= 0) & (labels < num_classes)
    if not covered.any():
        return pixels.copy()
    # Table rows for the classes present only: a label map may have thousands of classes.
    present = np.flatnonzero(np.bincount(labels[covered], minlength=num_classes))
    row_of = np.zeros(num_classes, np.intp)
    row_of[present] = np.arange(1, len(present) + 1)
    painted = np.where(covered, row_of[np.where(covered, labels, 0)], 0)
    palette = class_colors(num_classes)
    return _blend(pixels, painted, [palette[value] for value in present], alpha)
