"""Predictions drawn on their images, whole images at a time: detection overlays and tinted label maps.

The pixels are those of torchvision's ``draw_segmentation_masks`` then ``draw_bounding_boxes`` (a pixel under
one mask takes its colour, under several black, blended in float32 and truncated), without their cost on a
photo with many detections: torchvision sums every mask over the whole image and paints each mask through a
full-image index, 100 full-image passes per image. Here each mask is painted within its extent, the image is
blended once, and boxes and captions go on one PIL canvas.
"""

import colorsys
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

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
        masks=masks,
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
    masks: Tensor | None = None,
    score_threshold: float = 0.5,
    mask_alpha: float = 0.45,
) -> np.ndarray:
    """:func:`draw_detections` on uint8 (H, W, 3) ``pixels``, as images are read and saved; returns a new
    uint8 (H, W, 3) array."""
    keep = (scores >= score_threshold).cpu()
    boxes, labels, scores = boxes.cpu()[keep].float(), labels.cpu()[keep], scores.cpu()[keep]
    if not len(boxes):
        return pixels.copy()
    palette = class_colors(len(class_names) + 1)
    colors = [palette[int(label)] for label in labels]
    if masks is not None:
        kept = masks.cpu().numpy()
        pixels = _blend(pixels, *_painted_masks(kept, np.flatnonzero(keep.numpy()), colors), mask_alpha)
    canvas = Image.fromarray(pixels)
    draw = ImageDraw.Draw(canvas)
    width = max(1, round(max(pixels.shape[:2]) / 300))
    # As torchvision's draw_bounding_boxes: corners truncated to integers, all boxes before any caption.
    for box, color in zip(boxes.to(torch.int64).tolist(), colors):
        draw.rectangle(box, width=width, outline=color)
    captions = [f"{class_names[int(label) - 1]} {float(score):.2f}" for label, score in zip(labels, scores)]
    _draw_captions(draw, canvas.size, boxes, captions, colors, max(10, round(min(pixels.shape[:2]) / 45)))
    return np.array(canvas)


def _painted_masks(
    masks: np.ndarray, indices: np.ndarray, colors: list[tuple[int, int, int]]
) -> tuple[np.ndarray, np.ndarray]:
    """Where the bool (N, H, W) ``masks[indices]`` lie: (H, W) bool, and uint8 (H, W, 3) the colour
    (``colors``, one per index) of the one mask over each pixel, black under several. Each mask is read
    whole once, to find its rows, and painted within its extent only."""
    height, width = masks.shape[1:]
    count = np.zeros((height, width), np.uint8)
    color = np.zeros((height, width, 3), np.uint8)
    for index, rgb in zip(indices, colors):
        ys = np.flatnonzero(masks[index].any(axis=1))
        if not len(ys):
            continue
        band = masks[index, ys[0] : ys[-1] + 1]
        xs = np.flatnonzero(band.any(axis=0))
        rows, cols = slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1)
        crop = band[:, cols]
        # Saturating at 2: "under several" is all that counts.
        np.minimum(count[rows, cols] + crop, 2, out=count[rows, cols])
        color[rows, cols][crop] = rgb
    color[count > 1] = 0
    return count > 0, color


def _blend(pixels: np.ndarray, covered: np.ndarray, color: np.ndarray, alpha: float) -> np.ndarray:
    """uint8 (H, W, 3) ``pixels`` with ``color`` (H, W, 3) blended in where ``covered`` (H, W), as torchvision
    does it: ``pixels * (1 - alpha) + painted * alpha`` in float32, truncated, over every pixel (an uncovered
    pixel can lose 1 to the float rounding, as it does there)."""
    painted = np.where(covered[..., None], color, pixels)
    blended = pixels.astype(np.float32) * np.float32(1 - alpha)
    blended += painted.astype(np.float32) * np.float32(alpha)
    return blended.astype(np.uint8)


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
    palette = np.array(class_colors(num_classes), np.uint8)
    color = np.zeros((*labels.shape, 3), np.uint8)
    color[covered] = palette[labels[covered]]
    return _blend(pixels, covered, color, alpha)
