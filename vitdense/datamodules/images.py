"""Decoding image files of any mode, bit depth and orientation to RGB arrays.

Pillow decodes every format, except the TIFFs it reads wrong or not at all: 16-bit, 32-bit and float
TIFFs of several bands (as GIS tools and scientific cameras write them; Pillow refuses float and 3-band
"min-is-black" ones, and garbles band-by-band 16-bit ones) and those of 64-bit or 16-bit-float samples.
tifffile reads those. Samples above 8 bits are rescaled by the same rules whichever reads them
(:func:`scale_to_uint8`). A TIFF of several pages or pyramid levels, or of bands that are no colours, is
refused with what to do.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, ImageOps

__all__ = [
    "IMAGE_EXTENSIONS",
    "image_conversions",
    "image_sizes",
    "pixel_limit",
    "read_image",
    "scale_to_uint8",
    "to_rgb_array",
]

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
# Classic TIFF and BigTIFF, in either byte order.
_TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# What an EXIF / TIFF orientation does to the stored pixels, as ImageOps.exif_transpose turns a PIL image.
_TRANSPOSES = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_ALPHA = (tifffile.EXTRASAMPLE.ASSOCALPHA, tifffile.EXTRASAMPLE.UNASSALPHA)
# Samples Pillow reads right in a one-band TIFF (modes I;16, I;16S, I and F).
_PILLOW_ONE_BAND = (np.dtype(np.uint16), np.dtype(np.int16), np.dtype(np.int32), np.dtype(np.float32))


# ----------------------------------------------------------------------------------------------------
# Samples
# ----------------------------------------------------------------------------------------------------


def scale_to_uint8(values: np.ndarray) -> np.ndarray:
    """Samples of any integer or float dtype as ``uint8``, all bands of the image by the same rule.

    ``uint8`` stays; ``uint16`` is divided by 257; other integers the same when they fit 16 bit (how
    Pillow opens 16-bit PNGs), else rescaled by the image's min/max; floats from ``[0, 1]`` when they lie
    there, else by their min/max. Only finite values count for floats: NaN and Inf become 0 (black), where a
    single one would otherwise make the min/max, and so the whole image, black.

    Args:
        values: ``(H, W)`` or ``(H, W, C)`` samples.

    Returns:
        ``uint8`` of the same shape.
    """
    if values.dtype == np.uint8:
        return values
    if values.dtype == np.bool_:
        return values.astype(np.uint8) * 255
    samples = values.astype(np.float64)
    finite = np.isfinite(samples) if values.dtype.kind == "f" else None
    valid = samples[finite] if finite is not None else samples
    lo, hi = (float(valid.min()), float(valid.max())) if valid.size else (0.0, 0.0)
    if values.dtype.kind in "iu" and lo >= 0 and hi <= 65535:
        scaled = samples / 257.0
    elif values.dtype.kind == "f" and lo >= 0 and hi <= 1:
        scaled = samples * 255.0
    else:
        scaled = (samples - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(samples)
    if finite is not None:
        scaled[~finite] = 0.0
    return np.round(scaled).clip(0, 255).astype(np.uint8)


def _non_finite(values: np.ndarray) -> int:
    """Number of NaN / Inf samples (0 for integer samples)."""
    return int(values.size - np.count_nonzero(np.isfinite(values))) if values.dtype.kind == "f" else 0


def _non_finite_note(count: int) -> tuple[str, str]:
    return (
        "non_finite_pixels",
        f"has {count} NaN or infinite samples: set to 0 (black), the others rescaled over the finite values",
    )


def pixel_limit() -> int | None:
    """The most pixels an image may have to be decoded: twice ``PIL.Image.MAX_IMAGE_PIXELS``, beyond which
    Pillow refuses a file as a decompression bomb (the TIFFs tifffile reads are held to it too); None when
    the user lifted it (``PIL.Image.MAX_IMAGE_PIXELS = None``)."""
    limit = Image.MAX_IMAGE_PIXELS
    return None if limit is None else 2 * int(limit)


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """Convert a PIL image of any mode to an RGB array.

    Alpha is composited over black (the canvas padding colour), palettes are expanded, and high bit
    depth modes are rescaled to 8 bit rather than clipped, by :func:`scale_to_uint8`: ``I;16*`` by ``/257``,
    ``I`` the same when its values fit 16 bit (how Pillow opens 16-bit PNGs) else by its min/max, ``F`` from
    ``[0, 1]`` when it lies there else by the min/max of its finite values (NaN and Inf to black).

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
        gray = scale_to_uint8(np.asarray(image))
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
    if mode != "RGB":
        image = image.convert("RGB")
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))


# ----------------------------------------------------------------------------------------------------
# TIFF
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Tiff:
    """The first page of a TIFF as tifffile's header describes it."""

    height: int
    width: int
    dtype: np.dtype
    bands: int  # samples per pixel, alpha and extra bands included
    alpha: bool  # the band after the colours is alpha
    photometric: tifffile.PHOTOMETRIC
    planar: bool  # stored band after band
    orientation: int
    compression: str
    decodable: bool  # tifffile decodes its compression and predictor without the imagecodecs package

    @property
    def colours(self) -> int:
        """Colour bands: 1 (grayscale) or 3 (RGB) for the TIFFs read here."""
        return 3 if self.photometric == tifffile.PHOTOMETRIC.RGB else self.bands - self.alpha

    def read_by_tifffile(self) -> bool:
        """Whether tifffile reads it: samples Pillow reads wrong or not at all, grayscale or RGB above 8 bits
        or three 8-bit "min-is-black" bands (GDAL's way to write RGB). The others go to Pillow, which also
        knows palettes, CMYK, YCbCr and every compression.

        Raises:
            ValueError: only tifffile reads it right, and not its compression without imagecodecs.
        """
        if self.photometric not in (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.RGB):
            return False
        eight_bit = self.dtype in (np.dtype(np.uint8), np.dtype(np.bool_))
        if eight_bit and (self.photometric == tifffile.PHOTOMETRIC.RGB or self.colours == 1):
            return False
        if self.decodable:
            return True
        if self._pillow_reads_right:
            return False
        raise ValueError(
            f"is a {self.describe()} compressed with {self.compression}, which tifffile (which reads such "
            "TIFFs) decodes only with the imagecodecs package: pip install imagecodecs, or save the file "
            "uncompressed or with deflate"
        )

    @property
    def _pillow_reads_right(self) -> bool:
        """Pillow decodes it to the right pixels: one band of the samples of modes I;16, I and F, or
        interleaved 16-bit RGB (to its high bytes)."""
        if self.bands == 1:
            return self.dtype in _PILLOW_ONE_BAND
        rgb = self.photometric == tifffile.PHOTOMETRIC.RGB
        return rgb and not self.planar and self.dtype == np.dtype(np.uint16)

    def describe(self) -> str:
        """E.g. "3-band 16-bit TIFF"."""
        kind = "floating-point" if self.dtype.kind == "f" else f"{self.dtype.itemsize * 8}-bit"
        return f"{self.bands}-band {kind} TIFF"

    def conversions(self) -> list[tuple[str, str]]:
        """``(kind, what is done)`` when tifffile reads it, as :func:`image_conversions` lists them."""
        found = []
        if self.dtype.itemsize > 1:
            kind = "mode_float" if self.dtype.kind == "f" else "mode_high_bit_depth"
            gray = ", replicated to 3 channels" if self.colours == 1 else ""
            found.append((kind, f"is a {self.describe()} (read with tifffile): rescaled to 8 bit{gray}"))
        if self.photometric == tifffile.PHOTOMETRIC.MINISBLACK and self.colours == 3:
            found.append(("mode_other", "has 3 bands of no colour interpretation: read as red, green, blue"))
        if self.alpha:
            found.append(("mode_alpha", "has an alpha band: composited over black"))
        extra = self.bands - self.colours - self.alpha
        if extra > 0:
            found.append(("mode_other", f"has {extra} band(s) beyond its colours and alpha: left out"))
        return found


def _is_tiff(path: str | Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) in _TIFF_SIGNATURES


def _tiff(path: str | Path) -> _Tiff | None:
    """The header of a TIFF (None: the file is no TIFF).

    Raises:
        ValueError: a TIFF of several pages or pyramid levels, one of bands that are neither grayscale nor
            RGB, or one tifffile cannot parse; each says what to do.
    """
    if not _is_tiff(path):
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            pages, levels = len(tif.pages), len(tif.series[0].levels) if tif.series else 1
            extrasamples = tuple(page.extrasamples)
            orientation = page.tags.get(274)
            header = _Tiff(
                height=int(page.imagelength),
                width=int(page.imagewidth),
                dtype=np.dtype(page.dtype) if page.dtype is not None else np.dtype(np.uint8),
                bands=int(page.samplesperpixel),
                alpha=False,
                photometric=page.photometric,
                planar=page.planarconfig == tifffile.PLANARCONFIG.SEPARATE,
                orientation=int(orientation.value) if orientation is not None else 1,
                compression=page.compression.name,
                decodable=page.compression in tifffile.TIFF.DECOMPRESSORS
                and page.predictor in tifffile.TIFF.PREDICTORS,
            )
    except Exception as exc:  # noqa: BLE001 - tifffile raises many kinds for a damaged file
        raise ValueError(f"is a TIFF that tifffile cannot parse ({type(exc).__name__}: {exc})") from exc
    if pages > 1 or levels > 1:
        raise ValueError(
            f"is a TIFF of {max(pages, levels)} images (the pages of a stack or a time series, or the levels "
            "of a pyramid); vitdense reads one image per file: save the one to use as its own file"
        )
    colours = header.bands - 1 if extrasamples and extrasamples[-1] in _ALPHA else header.bands
    if header.photometric == tifffile.PHOTOMETRIC.RGB:
        alpha = bool(extrasamples) and extrasamples[0] in _ALPHA
        return replace(header, alpha=alpha)
    if header.photometric == tifffile.PHOTOMETRIC.MINISBLACK and colours not in (1, 3):
        raise ValueError(
            f"has {header.bands} bands that are neither grayscale nor RGB (no colour interpretation: e.g. "
            "the bands of a multispectral image); save the 3 bands to show as red, green and blue as an "
            "RGB image (with GDAL: gdal_translate -b RED -b GREEN -b BLUE in.tif rgb.tif)"
        )
    return replace(header, alpha=colours < header.bands)


def _read_tiff(path: str | Path, header: _Tiff) -> np.ndarray:
    """The stored pixels of a TIFF that tifffile reads, as ``uint8`` ``(H, W, 3)``.

    Raises:
        PIL.Image.DecompressionBombError: more pixels than Pillow would decode (its guard, kept here).
        ValueError: damaged data.
    """
    limit = pixel_limit()
    if limit is not None and header.height * header.width > limit:
        raise Image.DecompressionBombError(
            f"Image size ({header.height * header.width} pixels) exceeds limit of {limit} pixels, could be "
            "decompression bomb DOS attack."
        )
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            samples, axes = page.asarray(), page.axes
    except Exception as exc:  # noqa: BLE001 - tifffile raises many kinds for damaged data
        raise ValueError(f"TIFF data cannot be decoded ({type(exc).__name__}: {exc})") from exc
    if axes.startswith("S"):  # stored band after band
        samples = np.moveaxis(samples, 0, -1)
    if samples.ndim == 2:
        samples = samples[..., None]
    colours = samples[..., : header.colours]
    rgb = scale_to_uint8(colours)
    if header.colours == 1:
        rgb = np.repeat(rgb, 3, axis=2)
    if header.alpha:
        alpha = samples[..., header.colours].astype(np.float64)
        if header.dtype.kind in "iu":
            alpha = alpha / np.iinfo(header.dtype).max
        rgb = np.round(rgb * np.clip(np.nan_to_num(alpha), 0.0, 1.0)[..., None]).astype(np.uint8)
    return np.ascontiguousarray(rgb)


# ----------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------


def image_sizes(path: str | Path) -> set[tuple[int, int]]:
    """``(h, w)`` of the stored pixels and, when the EXIF (or TIFF) orientation turns them by 90 degrees, of
    the oriented image: the sizes :func:`read_image` can return. Reads the header only.

    Raises:
        OSError, ValueError, SyntaxError: the file is missing or not an image the kit reads.
    """
    header = _tiff(path)
    if header is not None and header.read_by_tifffile():
        h, w, orientation = header.height, header.width, header.orientation
    else:
        with Image.open(path) as image:
            (w, h), orientation = image.size, image.getexif().get(_ORIENTATION_TAG, 1)
    return {(h, w), (w, h)} if orientation in (5, 6, 7, 8) else {(h, w)}


def image_conversions(path: str | Path, expected_hw: tuple[int, int] | None = None) -> list[tuple[str, str]]:
    """What :func:`read_image` changes when it decodes ``path``, read from the header (and, for floating
    point samples, the samples: a NaN or Inf is noted).

    Args:
        path: image file.
        expected_hw: as in :func:`read_image`.

    Returns:
        ``(kind, what is done)`` pairs; kinds ``mode_grayscale``, ``mode_palette``, ``mode_alpha``,
        ``mode_high_bit_depth``, ``mode_float``, ``mode_other``, ``non_finite_pixels`` and
        ``exif_rotation``. Empty for 8-bit RGB without an EXIF orientation.

    Raises:
        OSError, ValueError, SyntaxError: the file is missing or not an image.
    """
    header = _tiff(path)
    if header is not None and header.read_by_tifffile():
        found = header.conversions()
        if header.dtype.kind == "f":
            with tifffile.TiffFile(path) as tif:
                non_finite = _non_finite(tif.pages.first.asarray())
            if non_finite:
                found.append(_non_finite_note(non_finite))
        h, w, orientation = header.height, header.width, header.orientation
    else:
        found, (h, w), orientation = _pillow_conversions(path, header)
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        turned = (w, h) if orientation >= 5 else (h, w)
        if expected_hw is not None and turned != expected_hw and (h, w) == expected_hw:
            what = "ignored, as the annotations were made on the stored pixels"
        else:
            what = "applied (rotated / flipped to how viewers show it)"
        found.append(("exif_rotation", f"has EXIF orientation {orientation}: {what}"))
    return found


def _pillow_conversions(
    path: str | Path, header: _Tiff | None
) -> tuple[list[tuple[str, str]], tuple[int, int], int]:
    """``(conversions, (h, w), orientation)`` of a file Pillow decodes (``header``: its TIFF header)."""
    with Image.open(path) as image:
        mode, (w, h) = image.mode, image.size
        orientation = image.getexif().get(_ORIENTATION_TAG, 1)
        transparent = "transparency" in image.info
        non_finite = _non_finite(np.asarray(image)) if mode == "F" else 0
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
    elif header is not None and header.dtype.itemsize > 1 and mode in ("RGB", "RGBA"):
        found.append(("mode_high_bit_depth", f"is a {header.describe()}: reduced to 8 bit (its high bytes)"))
    elif mode in _MODE_CONVERSIONS:
        found.append(_MODE_CONVERSIONS[mode])
    elif mode != "RGB":
        found.append(("mode_other", f"is mode {mode}: converted to RGB"))
    if non_finite:
        found.append(_non_finite_note(non_finite))
    return found, (h, w), orientation


def read_image(
    path: str | Path, expected_hw: tuple[int, int] | None = None, apply_exif: bool = True
) -> np.ndarray:
    """Decode an image file to RGB with its EXIF orientation applied.

    Every reader of the kit (training and evaluation datasets, the data check, ``predict`` and its overlays)
    decodes through here: Pillow, or tifffile for the TIFFs Pillow reads wrong (see the module).

    Args:
        path: image file.
        expected_hw: ``(h, w)`` the annotations were made on. If the EXIF-rotated image does not match
            but the stored pixels do, the stored pixels are returned (the annotation tool ignored EXIF).
        apply_exif: False: always the stored pixels, whatever the EXIF orientation.

    Returns:
        ``uint8`` ``(H, W, 3)``.

    Raises:
        OSError, ValueError, SyntaxError: the file is missing, truncated or not an image the kit reads
            (e.g. a TIFF of several pages); PIL.Image.DecompressionBombError: it is too large.
    """
    header = _tiff(path)
    if header is not None and header.read_by_tifffile():
        stored = _read_tiff(path, header)
        if not apply_exif or header.orientation not in _TRANSPOSES:
            return stored
        oriented = np.asarray(Image.fromarray(stored).transpose(_TRANSPOSES[header.orientation]))
        if expected_hw is not None and oriented.shape[:2] != expected_hw and stored.shape[:2] == expected_hw:
            return stored
        return np.ascontiguousarray(oriented)
    with Image.open(path) as raw:
        raw.load()  # decode now, so a truncated file fails here and not lazily later
        oriented = ImageOps.exif_transpose(raw) if apply_exif else raw
        if expected_hw is not None and (oriented.height, oriented.width) != expected_hw:
            if (raw.height, raw.width) == expected_hw:
                oriented = raw
        return to_rgb_array(oriented)
