"""The input-size contract of a pyramid: sides that are multiples of its coarsest stride."""

import math
from collections.abc import Mapping

__all__ = ["check_input_size", "coarsest_stride"]


def coarsest_stride(strides: Mapping[str, float]) -> int:
    """The largest of the levels' declared strides, the pyramid's ``size_divisibility``.

    Every level's grid tiles the image exactly only when the input is a multiple of the coarsest stride.

    Raises:
        ValueError: the coarsest stride is not a whole number of pixels.
    """
    largest = max(strides.values())
    if not float(largest).is_integer():
        raise ValueError(f"The coarsest stride {largest} must be a whole number of pixels")
    return int(largest)


def check_input_size(height: int, width: int, size_divisibility: int) -> None:
    """Raise, with the padded size to use, unless ``height`` and ``width`` are multiples of
    ``size_divisibility`` (the coarsest pyramid stride)."""
    d = size_divisibility
    if height % d or width % d:
        raise ValueError(
            f"Input size {height}x{width}: pad it to a multiple of {d} (the coarsest pyramid stride) so "
            f"that every level has its exact stride, e.g. {math.ceil(height / d) * d}x"
            f"{math.ceil(width / d) * d}."
        )
