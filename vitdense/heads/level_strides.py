"""Checks of the pyramid levels a segmentation head fuses: present, finest first, strides doubling."""

import math
from collections.abc import Mapping, Sequence

__all__ = ["doubling_level_strides"]


def doubling_level_strides(in_features: Sequence[str], strides: Mapping[str, float]) -> list[float]:
    """Declared strides of ``in_features``, checked to exist and to double from one level to the next.

    A head that upsamples each level by exact factors of 2 onto the finest grid needs this (3.5, 7, 14, 28
    on a patch-14 ViT).

    Args:
        in_features: levels to fuse, finest first.
        strides: the backbone's declared stride of each level, e.g. ``{"p2": 3.5, "p3": 7.0, ...}``.

    Returns:
        The stride of each level of ``in_features``, in its order.
    """
    missing = [name for name in in_features if name not in strides]
    if missing:
        raise ValueError(f"levels {missing} are not among the backbone's strides {dict(strides)}")
    level_strides = [float(strides[name]) for name in in_features]
    for (fine, fine_stride), (coarse, coarse_stride) in zip(
        zip(in_features, level_strides), zip(in_features[1:], level_strides[1:])
    ):
        if not math.isclose(coarse_stride, 2 * fine_stride):
            raise ValueError(
                "in_features must go from fine to coarse with each stride twice the previous one, so "
                f"that every upsampling is an exact x2; got {coarse} at stride {coarse_stride} after "
                f"{fine} at stride {fine_stride}. Pick consecutive pyramid levels, e.g. "
                "('p2', 'p3', 'p4', 'p5')."
            )
    return level_strides
