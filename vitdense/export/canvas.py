"""The fixed canvas an exported program takes, and the sample image it is checked on."""

import math

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["check_size", "sample_image"]


def check_size(image_size: tuple[int, int], divisor: int) -> tuple[int, int]:
    """(H, W) as ints, checked to be positive multiples of the model's ``size_divisibility``."""
    h, w = (int(v) for v in image_size)
    if h <= 0 or w <= 0 or h % divisor or w % divisor:
        fit_h, fit_w = (max(math.ceil(v / divisor), 1) * divisor for v in (h, w))
        raise ValueError(
            f"image_size {h}x{w}: both sides must be positive multiples of the model's size_divisibility "
            f"{divisor}, e.g. {fit_h}x{fit_w}"
        )
    return h, w


def sample_image(sample: Tensor | None, image_size: tuple[int, int], device: torch.device) -> Tensor:
    """One (1, 3, H, W) image at the export size on ``device``: ``sample`` ((3, H, W) or (1, 3, H, W)),
    or by default a fixed synthetic uint8 image of smooth colour blobs."""
    h, w = image_size
    if sample is None:
        # Smooth colour blobs rather than noise give a detector something to fire on; a real image is better.
        coarse = torch.rand(
            1, 3, max(h // 32, 2), max(w // 32, 2), generator=torch.Generator().manual_seed(0)
        )
        sample = (F.interpolate(coarse, size=(h, w), mode="bilinear") * 255).round().to(torch.uint8)
    if sample.ndim == 3:
        sample = sample[None]
    if sample.ndim != 4 or tuple(sample.shape) != (1, 3, h, w):
        raise ValueError(
            f"sample must be one (3, {h}, {w}) image at the export size, got shape {tuple(sample.shape)}; "
            "resize and pad it as the eval transform does"
        )
    return sample.to(device)
