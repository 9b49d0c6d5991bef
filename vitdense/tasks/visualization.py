"""Predictions drawn on their images: detection overlays and colour-coded label maps."""

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

# The drawing itself lives in overlay_drawing; the names stay importable from here.
from vitdense.tasks.overlay_drawing import class_colors, draw_detections, draw_label_map

__all__ = ["class_colors", "draw_detections", "draw_label_map", "fit_within", "valid_region_at_original"]


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
