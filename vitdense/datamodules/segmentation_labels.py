"""Semantic segmentation labels: reading label PNGs as class indices and mapping them to training labels.

Label PNGs hold one class index per pixel (mode ``L`` or ``P``, read as raw indices, never through the
palette; 16-bit ``I;16``/``I`` for more than 255 classes). After the optional reduce-zero-label mapping
(0 -> ``ignore_index``, ``v`` -> ``v - 1``) labels are ``0..K-1`` or ``ignore_index`` (default 255).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from vitdense.datamodules.bad_data import BadDataError

__all__ = ["LabelMapping", "read_label"]

# PIL modes whose pixels are class indices. "P" is read through its indices, never its palette.
_INDEX_MODES = ("L", "P", "I;16", "I;16L", "I;16B", "I", "1")


class LabelMapping:
    """Maps raw label values to training labels and rejects values that are neither a class nor ignored.

    Without ``reduce_zero_label`` values are kept. With it (ADE20K, where 0 is "other"): ``0`` ->
    ``ignore_index``, ``ignore_index`` stays, every other ``v`` -> ``v - 1``. A mapped value must be in
    ``[0, num_classes)`` or equal ``ignore_index``.

    Args:
        num_classes: number of classes ``K``.
        ignore_index: label of ignored pixels; must be ``>= num_classes``.
        reduce_zero_label: apply the mapping above.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, reduce_zero_label: bool = False) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes}: need at least 1 class")
        if ignore_index < num_classes:
            raise ValueError(
                f"ignore_index={ignore_index} must be >= num_classes={num_classes} (it would hide a class, "
                "or is negative); use 255 or any value >= num_classes"
            )
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.reduce_zero_label = reduce_zero_label
        # The smallest dtype that holds every label: cv2 resizes uint8 and int32 maps, not int64.
        self.dtype = np.dtype(np.uint8 if ignore_index <= 255 else np.int32)
        # Table raw value -> mapped value (-1: invalid). Raw values above max(K, ignore_index) are all
        # invalid, so they are clipped onto the last entry, which is kept invalid.
        size = max(num_classes, ignore_index) + 2
        raw = np.arange(size, dtype=np.int64)
        mapped = raw.copy()
        if reduce_zero_label:
            mapped = np.where(raw == ignore_index, raw, raw - 1)
            mapped[0] = ignore_index
        valid = ((mapped >= 0) & (mapped < num_classes)) | (mapped == ignore_index)
        valid[-1] = False
        self._lut = np.where(valid, mapped, -1)

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        """Map a raw label array.

        Args:
            raw: integer ``(H, W)`` (``uint8``, ``uint16`` or ``int32``).

        Returns:
            ``(H, W)`` in :attr:`dtype`, values in ``[0, num_classes)`` or ``ignore_index``.

        Raises:
            ValueError: values out of range; the message lists them.
        """
        index = raw.astype(np.intp)
        mapped = self._lut[np.clip(index, 0, len(self._lut) - 1, out=index)]
        bad = mapped < 0
        if raw.dtype.kind == "i":
            bad |= raw < 0
        if bad.any():
            values = np.unique(raw[bad])
            shown = ", ".join(str(int(v)) for v in values[:10]) + (", ..." if len(values) > 10 else "")
            rule = " after reduce_zero_label (0 -> ignore, v -> v - 1)" if self.reduce_zero_label else ""
            raise ValueError(
                f"label values {{{shown}}} are not in [0, {self.num_classes}){rule} nor "
                f"ignore_index={self.ignore_index}"
            )
        return mapped.astype(self.dtype)


def _label_mode_problem(mode: str) -> str | None:
    if mode in _INDEX_MODES:
        return None
    return (
        f"is a mode {mode} image, but a label PNG must hold one class index per pixel (mode L or P, or "
        "16-bit I;16); a colour rendering of a label map cannot be used: convert it to indices "
        "(e.g. map each palette colour to its class index) and save it as an 8-bit PNG"
    )


def read_label(path: str | Path) -> np.ndarray:
    """Read a label PNG as raw class indices (palette images by their indices, not their colours).

    Returns:
        ``(H, W)`` ``uint8`` (modes ``L``, ``P``, ``1``), ``uint16`` (``I;16*``) or ``int32`` (``I``).

    Raises:
        BadDataError: the file is not single-channel (e.g. an RGB rendering of the labels).
        OSError, ValueError, SyntaxError: the file is missing, truncated or not an image.
    """
    with Image.open(path) as image:
        image.load()
        problem = _label_mode_problem(image.mode)
        if problem is not None:
            raise BadDataError(f"{path} {problem}")
        array = np.asarray(image)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    elif array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("="))
    return array
