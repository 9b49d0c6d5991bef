"""Images to run a trained model on: a file, a folder or a glob; any mode, size and EXIF orientation."""

from __future__ import annotations

import glob
import logging
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from vitdense.datamodules.bad_data import DECODE_ERRORS, BadDataError
from vitdense.datamodules.images import IMAGE_EXTENSIONS, read_image, to_rgb_array
from vitdense.datamodules.segmentation_transforms import SegmentationEvalTransform
from vitdense.datamodules.transforms import EvalTransform

__all__ = [
    "PredictImages",
    "as_rgb_array",
    "find_images",
    "passed_over_report",
    "predict_sample",
    "resolve_images",
]

Sample = tuple[torch.Tensor, dict[str, Any]]
# (file, why it is not predicted)
PassedOver = tuple[str, str]

logger = logging.getLogger(__name__)

# Image formats Pillow decodes only with an optional codec or plugin: predicted where this Pillow has it.
_PLUGIN_FORMATS = {".avif": "AVIF", ".avifs": "AVIF", ".heic": "HEIC", ".heif": "HEIF", ".jxl": "JPEG XL"}


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def _why_not_an_image(path: Path) -> str | None:
    """Why the file ``path``, found in a folder or by a glob, is not predicted; None for an image."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:  # a dangling link, or one in a loop
        return f"a link that cannot be followed ({exc.strerror})"
    if not stat.S_ISREG(mode):
        return "not a regular file"
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return None
    if suffix in _PLUGIN_FORMATS:
        if suffix in Image.registered_extensions():
            return None
        kind = _PLUGIN_FORMATS[suffix]
        return f"a {kind} image, which this Pillow has no decoder for; convert it to PNG or JPEG"
    return f"not an image file vitdense reads (its suffix is none of {', '.join(IMAGE_EXTENSIONS)})"


def _sort_out(candidates: list[Path]) -> tuple[list[Path], list[PassedOver]]:
    """``(images, passed over)`` of ``candidates`` (files and links), sorted, each folder entry once: a glob
    that follows a link looping back into its folder finds each entry under many paths (and, where the
    system stops following the loop, the folder itself as a link it cannot follow)."""
    images, passed_over, seen = [], [], set()
    for path in sorted(set(candidates), key=lambda path: (len(path.parts), path)):  # the shortest path wins
        entry = (os.path.realpath(path.parent), path.name)
        if entry in seen or os.path.isdir(os.path.realpath(path)):
            continue
        seen.add(entry)
        why = _why_not_an_image(path)
        if why is None:
            images.append(path)
        else:
            passed_over.append((str(path), why))
    return sorted(images), sorted(passed_over)


def resolve_images(source: str | Path) -> list[Path]:
    """The image files of ``source``: the file itself, a folder's image files (sorted) or a glob's matching
    image files (other files, such as notes, are passed over as in a folder; :func:`find_images` names
    them).

    A folder's sub-folders are not searched (outputs written inside it would be read back); images found
    there are named in a warning, or in the error when the folder holds none itself.
    """
    return find_images(source)[0]


def find_images(source: str | Path) -> tuple[list[Path], list[PassedOver]]:
    """The image files of ``source`` as :func:`resolve_images` finds them, and the files found beside them
    that are not predicted, each with why: other suffixes, formats this Pillow has no decoder for (AVIF,
    HEIC, ...), links that cannot be followed. Hidden files (``.DS_Store``) are not listed: no one means them.
    """
    path = Path(source)
    if path.is_file():
        return [path], []
    if path.is_dir():
        entries = [p for p in path.iterdir() if not p.name.startswith(".") and not p.is_dir()]
        files, passed_over = _sort_out(entries)
        nested = next((p for p in path.rglob("*") if p.parent != path and _is_image(p)), None)
        if nested is not None:
            hint = (
                f"its sub-folders hold images too (e.g. {nested}), which are not read; to include them give "
                f"a glob that recurses, such as '{Path(glob.escape(str(path))) / '**' / '*'}'"
            )
            if not files:
                raise ValueError(
                    f"the images to predict, {str(source)!r}: the folder holds no image file, but {hint}"
                )
            logger.warning(
                "the images to predict, %r: %d image file(s) read, but %s", str(source), len(files), hint
            )
        elif not files:
            raise ValueError(
                f"the images to predict, {str(source)!r}: the folder holds no image file "
                f"({', '.join(IMAGE_EXTENSIONS[:4])}, ...){_first(passed_over)}; check the path"
            )
    else:
        matches = [Path(p) for p in glob.glob(str(source), recursive=True) if not os.path.isdir(p)]
        files, passed_over = _sort_out(matches)  # '**/**' matches a file more than once
    if not files and not passed_over and not glob.has_magic(str(source)):
        raise ValueError(f"the images to predict, {str(source)!r}, do not exist; check the path")
    if not files:
        raise ValueError(
            f"no image file matches the images to predict, {str(source)!r}{_first(passed_over)}; give an "
            f"image file, a folder of images ({', '.join(IMAGE_EXTENSIONS[:4])}, ...) or a glob such as "
            "'photos/**/*.jpg'"
        )
    return files, passed_over


def _first(passed_over: list[PassedOver]) -> str:
    """The first passed-over file, for a message that no image was found."""
    if not passed_over:
        return ""
    name, why = passed_over[0]
    more = f" and {len(passed_over) - 1} other file(s)" if len(passed_over) > 1 else ""
    return f" ({name}{more} passed over: {why})"


def passed_over_report(passed_over: Sequence[PassedOver]) -> str:
    """The message for the files found with the images to predict that were not predicted, each with why
    (empty when there are none)."""
    if not passed_over:
        return ""
    listed = "".join(f"\n  {name}: {why}" for name, why in passed_over[:10])
    more = f"\n  ... and {len(passed_over) - 10} more" if len(passed_over) > 10 else ""
    return f"{len(passed_over)} file(s) found with the images were not predicted:{listed}{more}"


def as_rgb_array(image: str | Path | Image.Image | np.ndarray, apply_exif: bool = True) -> np.ndarray:
    """``uint8`` (H, W, 3) RGB from a path, a PIL image (EXIF orientation applied) or an RGB array.

    ``apply_exif=False`` keeps a file's or PIL image's stored pixels: the frame of annotations made by a
    tool that ignored the EXIF orientation.

    Raises:
        BadDataError: a file that cannot be decoded, named with the fix.
    """
    if isinstance(image, (str, Path)):
        if not os.path.isfile(image):
            raise BadDataError(f"{image} does not exist or is not a file; check the path")
        try:
            return read_image(image, apply_exif=apply_exif)
        except DECODE_ERRORS as exc:
            raise BadDataError(
                f"{image} cannot be decoded ({type(exc).__name__}: {exc}); replace or remove the file"
            ) from exc
    if isinstance(image, Image.Image):
        return to_rgb_array(ImageOps.exif_transpose(image) if apply_exif else image)
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(
            f"expected a uint8 (H, W, 3) RGB array, got {array.dtype} {array.shape}; pass a path or a PIL "
            "image to have any mode converted"
        )
    return np.ascontiguousarray(array)


def predict_sample(
    image: np.ndarray, transform: EvalTransform | SegmentationEvalTransform, file_name: str, index: int
) -> Sample:
    """The model input of one RGB image and the target keys ``predict_step`` needs to map results back.

    ``target`` has ``"image_id"`` (``index``), ``"file_name"``, ``"orig_size"`` (h, w), ``"image_size"``
    (the valid region of the input) and, for detection, ``"scale"`` (input = original * scale).
    """
    out = transform(image)
    target: dict[str, Any] = {
        "image_id": index,
        "file_name": file_name,
        "orig_size": (int(image.shape[0]), int(image.shape[1])),
    }
    if isinstance(out, torch.Tensor):  # segmentation: the resized image itself, not padded
        target["image_size"] = (int(out.shape[-2]), int(out.shape[-1]))
        return out, target
    target.update(scale=out.scale, image_size=out.image_size)
    return out.image, target


class PredictImages(Dataset):
    """The images of a file, a folder or a glob, prepared as the evaluation transform prepares them.

    An unreadable file loads as None, which the collate functions leave out: the other images are predicted,
    and :class:`~vitdense.tasks.prediction_writer.PredictionWriter` reports the files without outputs at the
    end, each with why it cannot be read. The files of a folder or glob that are no images it reads are in
    :attr:`passed_over`, reported at the end as well.

    Args:
        source: an image file, a folder (its image files, sorted) or a glob (``**`` recurses).
        transform: the datamodule's evaluation transform (:class:`EvalTransform` for detection,
            :class:`SegmentationEvalTransform` for segmentation).
        apply_exif: turn each image as its EXIF orientation says (how viewers show it; the default), or
            False to keep the stored pixels (how a dataset annotated on them, ignoring EXIF, holds them).
    """

    def __init__(
        self,
        source: str | Path,
        transform: EvalTransform | SegmentationEvalTransform,
        apply_exif: bool = True,
    ) -> None:
        self.source = source
        self.files, self.passed_over = find_images(source)
        self.transform = transform
        self.apply_exif = apply_exif

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Sample | None:
        path = self.files[index]
        try:
            image = as_rgb_array(path, self.apply_exif)
        except BadDataError:
            return None
        return predict_sample(image, self.transform, str(path), index)
