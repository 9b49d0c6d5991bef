"""Predictions drawn on their images: detection overlays and colour-coded label maps."""

import colorsys
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torch.nn import functional as F
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

__all__ = ["class_colors", "draw_detections", "draw_label_map", "fit_within", "valid_region_at_original"]


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
    keep = scores >= score_threshold
    boxes, labels, scores = boxes[keep].float().cpu(), labels[keep].cpu(), scores[keep].cpu()
    image = image.cpu()
    if not len(boxes):
        return image
    palette = class_colors(len(class_names) + 1)
    colors = [palette[int(label)] for label in labels]
    if masks is not None:
        image = draw_segmentation_masks(image, masks[keep].bool().cpu(), alpha=mask_alpha, colors=colors)
    captions = [f"{class_names[int(label) - 1]} {float(score):.2f}" for label, score in zip(labels, scores)]
    width = max(1, round(max(image.shape[-2:]) / 300))
    image = draw_bounding_boxes(image, boxes, colors=colors, width=width)
    return _draw_captions(image, boxes, captions, colors, max(10, round(min(image.shape[-2:]) / 45)))


def _draw_captions(
    image: Tensor, boxes: Tensor, captions: list[str], colors: list[tuple[int, int, int]], size: int
) -> Tensor:
    """Each caption in a box of its colour at the top left of its box, in text ``size`` pixels high, so that
    it reads on a 12 MP photo as on a thumbnail (torchvision's default font is 10 px at any size). Pillow's
    own font has Latin letters only: other scripts show as empty boxes, as with torchvision's."""
    canvas = Image.fromarray(image.permute(1, 2, 0).numpy())
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=size)
    margin = max(1, size // 8)
    for (x1, y1, _, _), caption, color in zip(boxes.tolist(), captions, colors):
        left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
        # At the box's top left, moved inside the image where the box touches its right or bottom edge.
        x = max(margin, min(x1, canvas.width - right - margin))
        y = max(margin - top, min(y1, canvas.height - bottom - margin))
        draw.rectangle(
            (x + left - margin, y + top - margin, x + right + margin, y + bottom + margin), fill=color
        )
        dark = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2] < 128
        draw.text((x, y), caption, fill=(255, 255, 255) if dark else (0, 0, 0), font=font)
    return torch.from_numpy(np.array(canvas)).permute(2, 0, 1).contiguous()


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
    label_map = label_map.cpu()
    present = [int(value) for value in torch.unique(label_map) if 0 <= int(value) < num_classes]
    if not present:
        return image.cpu()
    palette = class_colors(num_classes)
    masks = torch.stack([label_map == value for value in present])
    return draw_segmentation_masks(image.cpu(), masks, alpha=alpha, colors=[palette[v] for v in present])


def valid_region_at_original(image: Tensor, image_size: Sequence[int], orig_size: Sequence[int]) -> Tensor:
    """The valid ``image_size`` region of a uint8 (3, H, W) model input, resized back to ``orig_size``."""
    h, w = (int(v) for v in image_size)
    region = image[:, :h, :w].float()[None]
    resized = F.interpolate(region, size=tuple(int(v) for v in orig_size), mode="bilinear", antialias=True)
    return resized[0].round().clamp(0, 255).to(torch.uint8)


def fit_within(image: Tensor, max_side: int) -> Tensor:
    """A uint8 (3, H, W) image downscaled so that its longer side is at most ``max_side``."""
    h, w = image.shape[-2:]
    if max(h, w) <= max_side:
        return image
    scale = max_side / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    resized = F.interpolate(image.float()[None], size=size, mode="bilinear", antialias=True)
    return resized[0].round().clamp(0, 255).to(torch.uint8)
