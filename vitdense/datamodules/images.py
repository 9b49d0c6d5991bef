"""Decoding image files of any mode and orientation to RGB arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

__all__ = ["IMAGE_EXTENSIONS", "image_conversions", "read_image", "to_rgb_array"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")
_ORIENTATION_TAG = 0x0112
# (kind, what to_rgb_array does) per PIL mode that is not plain RGB.
_MODE_CONVERSIONS = {
    "1": ("mode_grayscale", "is black and white (mode 1): replicated to 3 channels"),
    "L": ("mode_grayscale", "is grayscale (mode L): replicated to 3 channels"),
    "P": ("mode_palette", "is a palette image (mode P): expanded to RGB"),
    "RGBA": ("mode_alpha", "has an alpha channel (mode RGBA): composited over black"),
    "LA": ("mode_alpha", "is grayscale with alpha (mode LA): composited over black"),
    "PA": ("mode_alpha", "is a palette image with alpha (mode PA): composited over black"),
    "I": ("mode_high_bit_depth", "is 16/32-bit integer (mode I): rescaled to 8 bit"),
    "F": ("mode_float", "is floating point (mode F): rescaled to 8 bit"),
}


# ----------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """Convert a PIL image of any mode to an RGB array.

    Alpha is composited over black (the canvas padding colour), palettes are expanded, and high bit
    depth modes are rescaled to 8 bit rather than clipped: ``I;16*`` by ``/257``, ``I`` the same when its
    values fit 16 bit (how Pillow opens 16-bit PNGs) else by its min/max, ``F`` from ``[0, 1]`` when it
    lies there else by its min/max.

    Returns:
        ``uint8`` ``(H, W, 3)``.
    """
    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
        rgb = rgba[..., :3] * (rgba[..., 3:] / 255.0)
        return np.ascontiguousarray(np.round(rgb).astype(np.uint8))
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(image).astype(np.float64)
        lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if mode.startswith("I;16") or (mode == "I" and lo >= 0 and hi <= 65535):
            gray = values / 257.0
        elif mode == "F" and lo >= 0 and hi <= 1:
            gray = values * 255.0
        else:
            gray = (values - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(values)
        gray = np.round(gray).clip(0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
    if mode != "RGB":
        image = image.convert("RGB")
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))


def image_conversions(path: str | Path, expected_hw: tuple[int, int] | None = None) -> list[tuple[str, str]]:
    """What :func:`read_image` changes when it decodes ``path``, read from the header only.

    Args:
        path: image file.
        expected_hw: as in :func:`read_image`.

    Returns:
        ``(kind, what is done)`` pairs; kinds ``mode_grayscale``, ``mode_palette``, ``mode_alpha``,
        ``mode_high_bit_depth``, ``mode_float``, ``mode_other`` and ``exif_rotation``. Empty for RGB
        without an EXIF orientation.

    Raises:
        OSError, ValueError, SyntaxError: the file is missing or not an image.
    """
    with Image.open(path) as image:
        mode, (w, h) = image.mode, image.size
        orientation = image.getexif().get(_ORIENTATION_TAG, 1)
        transparent = "transparency" in image.info
    found = []
    if mode.startswith("I;16"):
        found.append(("mode_high_bit_depth", f"is 16-bit (mode {mode}): rescaled to 8 bit"))
    elif mode == "P" and transparent:
        found.append(
            (
                "mode_palette",
                "is a palette image with transparency (mode P): expanded to RGB, composited over black",
            )
        )
    elif mode in _MODE_CONVERSIONS:
        found.append(_MODE_CONVERSIONS[mode])
    elif mode != "RGB":
        found.append(("mode_other", f"is mode {mode}: converted to RGB"))
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        turned = (w, h) if orientation >= 5 else (h, w)
        if expected_hw is not None and turned != expected_hw and (h, w) == expected_hw:
            what = "ignored, as the annotations were made on the stored pixels"
        else:
            what = "applied (rotated / flipped to how viewers show it)"
        found.append(("exif_rotation", f"has EXIF orientation {orientation}: {what}"))
    return found


def read_image(
    path: str | Path, expected_hw: tuple[int, int] | None = None, apply_exif: bool = True
) -> np.ndarray:
    """Decode an image file to RGB with its EXIF orientation applied.

    Args:
        path: image file.
        expected_hw: ``(h, w)`` the annotations were made on. If the EXIF-rotated image does not match
            but the stored pixels do, the stored pixels are returned (the annotation tool ignored EXIF).
        apply_exif: False: always the stored pixels, whatever the EXIF orientation.

    Returns:
        ``uint8`` ``(H, W, 3)``.

    Raises:
        OSError, ValueError, SyntaxError: the file is missing, truncated or not an image.
    """
    with Image.open(path) as raw:
        raw.load()  # decode now, so a truncated file fails here and not lazily later
        oriented = ImageOps.exif_transpose(raw) if apply_exif else raw
        if expected_hw is not None and (oriented.height, oriented.width) != expected_hw:
            if (raw.height, raw.width) == expected_hw:
                oriented = raw
        return to_rgb_array(oriented)
