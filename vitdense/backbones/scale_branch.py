"""The branch that takes a ViT's patch map to one pyramid level, resampled by 4, 2, 1 or 0.5 (ViTDet)."""

import math
from collections.abc import Callable

from birder.layers import LayerNorm2d
from torch import nn

__all__ = ["channel_layer_norm", "level_name", "scale_branch"]


def channel_layer_norm(num_channels: int) -> LayerNorm2d:
    """LayerNorm over the channels of every location (eps 1e-6), ViTDet's norm in the x4 branch.

    A named function so that a recipe can give it by import path and a saved config can write it back.
    """
    return LayerNorm2d(num_channels, eps=1e-6)


def level_name(scale: float) -> str:
    """ViTDet's name of the level at ``scale`` times the ViT map's resolution: ``p2`` (x4) ... ``p5``
    (x0.5)."""
    return f"p{4 - int(math.log2(scale))}"


def scale_branch(
    scale: float, channels: int, norm_layer: Callable[[int], nn.Module], *, halve_channels: bool
) -> tuple[nn.Module, int]:
    """Resampling of a ViT map by ``scale``: two stride-2 deconvolutions with a norm and GELU between (4), one
    stride-2 deconvolution (2), the map itself (1) or a 2x2 max-pool (0.5).

    A deconvolution splits a cell exactly in two and the pool merges exactly two, so the level's stride is the
    ViT's divided by ``scale``.

    Args:
        scale: 4, 2, 1 or 0.5.
        channels: channels of the ViT map.
        norm_layer: norm between the two deconvolutions of the x4 branch, built as ``norm_layer(channels)``.
        halve_channels: every deconvolution halves the channels (ViTDet) instead of keeping them (BEiT).

    Returns:
        The branch, and the channels of its output.
    """
    up = channels // 2 if halve_channels else channels
    if scale == 4.0:
        up2 = up // 2 if halve_channels else up
        branch: nn.Module = nn.Sequential(
            nn.ConvTranspose2d(channels, up, kernel_size=2, stride=2),
            norm_layer(up),
            nn.GELU(),
            nn.ConvTranspose2d(up, up2, kernel_size=2, stride=2),
        )
        return branch, up2
    if scale == 2.0:
        return nn.ConvTranspose2d(channels, up, kernel_size=2, stride=2), up
    if scale == 1.0:
        return nn.Identity(), channels
    if scale == 0.5:
        return nn.MaxPool2d(kernel_size=2, stride=2), channels
    raise ValueError(f"Unsupported scale factor {scale}: use 4, 2, 1 or 0.5")
