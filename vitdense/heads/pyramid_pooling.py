"""PSPNet's pyramid pooling module (Zhao et al., "Pyramid Scene Parsing Network", 2017): mmseg's ``PPM``."""

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["PyramidPoolingModule", "conv1x1_norm_relu"]


def conv1x1_norm_relu(
    in_channels: int, out_channels: int, norm_layer: Callable[[int], nn.Module]
) -> nn.Sequential:
    """1x1 conv (no bias: the norm's shift replaces it), norm, ReLU: mmseg's ``ConvModule`` with kernel 1."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
        norm_layer(out_channels),
        nn.ReLU(inplace=True),
    )


class PyramidPoolingModule(nn.Module):
    """Global context at several grid sizes: the input and its pooled branches, concatenated on channels.

    Each branch average-pools the map to ``s x s`` cells (``nn.AdaptiveAvgPool2d``, as mmseg: on a grid
    that ``s`` does not divide, neighbouring cells' pooling windows overlap by one row or column), applies a
    1x1 conv, norm and ReLU, and is upsampled back bilinearly with ``align_corners=False`` (mmseg's UperNet
    setting). The 1 x 1 branch's map has one value per channel and image: a BatchNorm needs more than one
    image per batch in training (mmseg: SyncBN over 8 GPUs), and GroupNorm(32) at least 64 channels (more
    than one value per group).

    Args:
        in_channels: channels of the input map.
        channels: channels of every pooled branch.
        pool_scales: output grid side of each branch (PSPNet / UperNet: 1, 2, 3, 6).
        norm_layer: norm after every 1x1 conv, built as ``norm_layer(channels)``.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if not pool_scales or min(pool_scales) < 1:
            raise ValueError(f"pool_scales must be positive grid sides, got {list(pool_scales)}")
        self.branches = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(scale), conv1x1_norm_relu(in_channels, channels, norm_layer))
            for scale in pool_scales
        )
        self.out_channels = in_channels + len(pool_scales) * channels

    def forward(self, x: Tensor) -> Tensor:
        """Pool, project, upsample and concatenate.

        Args:
            x: float (B, in_channels, h, w).

        Returns:
            float (B, out_channels, h, w): ``x`` followed by the branches in ``pool_scales`` order.
        """
        size = x.shape[-2:]
        pooled = [
            F.interpolate(branch(x), size=size, mode="bilinear", align_corners=False)
            for branch in self.branches
        ]
        return torch.cat([x, *pooled], dim=1)
