"""Decoding image files of any mode and orientation to RGB arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

__all__ = ["IMAGE_EXTENSIONS", "read_image", "to_rgb_array"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")


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


def read_image(path: str | Path, expected_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Decode an image file to RGB with its EXIF orientation applied.

    Args:
        path: image file.
        expected_hw: ``(h, w)`` the annotations were made on. If the EXIF-rotated image does not match
            but the stored pixels do, the stored pixels are returned (the annotation tool ignored EXIF).

    Returns:
        ``uint8`` ``(H, W, 3)``.

    Raises:
        OSError, ValueError, SyntaxError: the file is missing, truncated or not an image.
    """
    with Image.open(path) as raw:
        raw.load()  # decode now, so a truncated file fails here and not lazily later
        oriented = ImageOps.exif_transpose(raw)
        if expected_hw is not None and (oriented.height, oriented.width) != expected_hw:
            if (raw.height, raw.width) == expected_hw:
                oriented = raw
        return to_rgb_array(oriented)
