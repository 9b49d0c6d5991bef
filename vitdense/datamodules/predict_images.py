"""Images to run a trained model on: a file, a folder or a glob; any mode, size and EXIF orientation."""

from __future__ import annotations

import glob
import logging
import os
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

__all__ = ["PredictImages", "as_rgb_array", "predict_sample", "resolve_images"]

Sample = tuple[torch.Tensor, dict[str, Any]]

logger = logging.getLogger(__name__)


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def resolve_images(source: str | Path) -> list[Path]:
    """The image files of ``source``: the file itself, a folder's image files (sorted) or a glob's matching
    image files (other files, such as notes, are passed over as in a folder).

    A folder's sub-folders are not searched (outputs written inside it would be read back); images found
    there are named in a warning, or in the error when the folder holds none itself.
    """
    path = Path(source)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if _is_image(p))
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
                f"({', '.join(IMAGE_EXTENSIONS[:4])}, ...); check the path"
            )
    else:
        matches = [Path(p) for p in glob.glob(str(source), recursive=True) if os.path.isfile(p)]
        files = sorted({p for p in matches if _is_image(p)})  # '**/**' matches a file more than once
    if not files and not glob.has_magic(str(source)):
        raise ValueError(f"the images to predict, {str(source)!r}, do not exist; check the path")
    if not files:
        raise ValueError(
            f"no image file matches the images to predict, {str(source)!r}; give an image file, a folder of "
            f"images ({', '.join(IMAGE_EXTENSIONS[:4])}, ...) or a glob such as 'photos/**/*.jpg'"
        )
    return files


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
    end, each with why it cannot be read.

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
        self.files = resolve_images(source)
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
