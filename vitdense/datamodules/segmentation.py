"""Semantic segmentation data: label mapping, folder datasets, bad-data policy and the DataModules.

A data set is a folder of images and a folder of label PNGs matched by file stem (relative path without
suffix, so nested folders work too). Label PNGs hold one class index per pixel (mode ``L`` or ``P``, read
as raw indices, never through the palette; 16-bit ``I;16``/``I`` for more than 255 classes). After the
optional reduce-zero-label mapping (0 -> ``ignore_index``, ``v`` -> ``v - 1``) labels are ``0..K-1`` or
``ignore_index`` (default 255), which marks ignored pixels and padding.

Samples (see :class:`SegmentationFolder`): training ``(image uint8 (3, C, C), {"label": int64 (C, C)})``;
evaluation ``(image uint8 (3, h, w), {"label": int64 (H0, W0), "orig_size", "image_size", "file_name"})``
with the image resized to fit ``scale`` and the label at the original resolution.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vitdense.datamodules.bad_data import DECODE_ERRORS as _DECODE_ERRORS
from vitdense.datamodules.bad_data import (
    MIN_IMAGE_SIDE,
    BadDataError,
    CheckedDataset,
    Finding,
    OnBadData,
    Policy,
)
from vitdense.datamodules.bad_data import SKIP_HINT as _SKIP_HINT
from vitdense.datamodules.collate import collate_segmentation
from vitdense.datamodules.images import IMAGE_EXTENSIONS, image_conversions, image_sizes, read_image
from vitdense.datamodules.loading import SplitDataModule
from vitdense.datamodules.predict_images import PredictImages
from vitdense.datamodules.segmentation_transforms import SegmentationEvalTransform, SegmentationTrainTransform

__all__ = [
    "ADE20K_CLASSES",
    "ADE20KDataModule",
    "LabelMapping",
    "SegmentationFolder",
    "SegmentationFolderDataModule",
    "find_ade20k",
    "read_label",
]

# ADEChallengeData2016 (SceneParsing, 150 classes) in label order 1..150, i.e. index 0..149 after
# reduce_zero_label; the names mmseg uses (its 'bed ' has a stray space, dropped here).
ADE20K_CLASSES: list[str] = [
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper",
    "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table",
    "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table",
    "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island",
    "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman",
    "bottle", "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy",
    "washer", "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot",
    "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce",
    "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
]  # fmt: skip

# PIL modes whose pixels are class indices. "P" is read through its indices, never its palette.
_INDEX_MODES = ("L", "P", "I;16", "I;16L", "I;16B", "I", "1")


# ----------------------------------------------------------------------------------------------------
# Labels
# ----------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------------


@dataclass
class _Pair:
    key: str  # relative path without suffix
    image: str
    label: str


def _index_folder(folder: Path, suffixes: tuple[str, ...], argument: str) -> dict[str, list[Path]]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: folder not found; check the {argument} argument")
    index: dict[str, list[Path]] = {}
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            path = Path(dirpath, name)
            if path.suffix.lower() in suffixes:
                index.setdefault(path.relative_to(folder).with_suffix("").as_posix(), []).append(path)
    return index


class SegmentationFolder(CheckedDataset):
    """One split: images and label PNGs matched by stem, checked cheaply (file headers) at construction.

    With a :class:`SegmentationTrainTransform` it yields ``(image, {"label"})``: ``image`` ``uint8``
    ``(3, C, C)``, ``label`` ``int64`` ``(C, C)`` (padding = ``ignore_index``). With a
    :class:`SegmentationEvalTransform`: ``image`` ``uint8`` ``(3, h, w)`` (resized to fit ``scale``, not
    padded) and ``{"label": int64 (H0, W0), "orig_size": (H0, W0), "image_size": (h, w), "file_name"}``,
    the label at the original resolution. Labels are mapped by :class:`LabelMapping`.

    Bad records: at construction, an image without a label PNG or a label without an image, two images
    with the same stem, a label that is not single-channel, an unreadable header, an image smaller than
    one 14 px patch and image/label sizes that differ (read from the headers; an EXIF rotation of the
    image is allowed for); at load time, out-of-range label values, sizes that differ, undecodable
    files and (training) a label whose every pixel is ``ignore_index``, which has nothing to learn. Under
    ``on_bad_data="error"`` they raise :class:`BadDataError` naming the file and the pair's stem; under
    ``"skip"`` they are logged and counted in ``skipped`` by kind, and a bad sample found at load time is
    replaced by the next good one in training, and in evaluation yields None, which
    :func:`collate_segmentation` drops (a replacement would be scored twice; counts made in DataLoader
    workers stay in those processes). Images of other modes (grayscale, alpha, palette, 16-bit, float) and
    EXIF orientations are converted on load.

    Args:
        images: image folder (any of ``IMAGE_EXTENSIONS``; searched recursively).
        labels: label folder (``.png``; same relative paths and stems as the images).
        transform: training or evaluation transform.
        num_classes: number of classes ``K``.
        ignore_index: ignored / padding label, ``>= K``.
        reduce_zero_label: raw 0 -> ``ignore_index``, ``v`` -> ``v - 1``.
        on_bad_data: ``"error"``, ``"skip"`` or ``"collect"`` (see :class:`CheckedDataset`).
        split: the DataModule's split, whose ``{split}_images`` / ``{split}_labels`` arguments messages name.
    """

    def __init__(
        self,
        images: str | Path,
        labels: str | Path,
        transform: SegmentationTrainTransform | SegmentationEvalTransform,
        *,
        num_classes: int,
        ignore_index: int = 255,
        reduce_zero_label: bool = False,
        on_bad_data: Policy = "error",
        split: str | None = None,
    ) -> None:
        super().__init__(on_bad_data)
        self._argument_prefix = f"{split}_" if split else ""
        self.images = Path(images)
        self.labels = Path(labels)
        self.source = f"{self.images} + {self.labels}"
        self.transform = transform
        self.train = isinstance(transform, SegmentationTrainTransform)
        self.replace_bad = self.train
        self.mapping = LabelMapping(num_classes, ignore_index, reduce_zero_label)
        self._pairs = self._build_pairs()
        self._log_skips()
        if not self._pairs and (self.on_bad_data != "collect" or not self.skipped):
            if self.skipped:
                message = (
                    f"{self.source}: every image/label pair is bad ({dict(self.skipped)}); see the messages "
                    "logged above"
                )
            else:
                message = (
                    f"{self.images}: no image has a label PNG in {self.labels}; images and labels are "
                    "matched by file stem (000001.jpg <-> 000001.png), check both folder arguments"
                )
            raise BadDataError(message, Finding("no_samples", message, self.source, "the whole split"))

    def _build_pairs(self) -> list[_Pair]:
        images = _index_folder(self.images, IMAGE_EXTENSIONS, f"{self._argument_prefix}images")
        labels = _index_folder(self.labels, (".png",), f"{self._argument_prefix}labels")
        pairs = []
        for key in sorted(images.keys() | labels.keys()):
            found, label = images.get(key, []), labels.get(key, [])
            if not label:
                wanted = self.labels / f"{key}.png"
                other = sorted(p for p in wanted.parent.glob(f"{glob.escape(wanted.stem)}.*") if p != wanted)
                saved_as = (
                    f" ({other[0]} is not a PNG: labels must be lossless PNGs, as a JPEG's compression "
                    "changes the class ids along every edge; save it as PNG from its source)"
                    if other
                    else ""
                )
                self._bad(
                    "missing_label",
                    f"{found[0]} has no label {wanted}{saved_as}; add the label PNG or remove the "
                    f"image, {_SKIP_HINT}",
                    file=found[0],
                    record=key,
                )
                continue
            if not found:
                self._bad(
                    "missing_image",
                    f"{label[0]} has no image {self.images / key}.* (any of "
                    f"{', '.join(IMAGE_EXTENSIONS[:4])}, ...); add the image or remove the label, "
                    f"{_SKIP_HINT}",
                    file=label[0],
                    record=key,
                )
                continue
            if len(found) > 1:
                names = ", ".join(sorted(str(p) for p in found))
                self._bad(
                    "duplicate_image",
                    f"{names} share the stem of label {label[0]}; keep one of them, {_SKIP_HINT}",
                    file=label[0],
                    record=key,
                )
                continue
            pair = _Pair(key, str(found[0]), str(label[0]))
            problem = self._header_problem(pair)
            if problem is not None:
                kind, file, what = problem
                self._bad(kind, f"{file} {what}, {_SKIP_HINT}", file=file, record=key)
                continue
            pairs.append(pair)
        return pairs

    def _header_problem(self, pair: _Pair) -> tuple[str, str, str] | None:
        """``(kind, file, what is wrong and the fix)`` when the headers show a bad pair, else None.

        Decoding is left to load time.
        """
        unreadable = "cannot be read ({}: {}); replace it or remove the pair"
        try:
            with Image.open(pair.label) as label:
                mode, (w, h) = label.mode, label.size
        except _DECODE_ERRORS as exc:
            return "corrupt_label", pair.label, unreadable.format(type(exc).__name__, exc)
        problem = _label_mode_problem(mode)
        if problem is not None:
            return "label_not_indices", pair.label, problem
        try:
            sizes = image_sizes(pair.image)
        except _DECODE_ERRORS as exc:
            return "corrupt_image", pair.image, unreadable.format(type(exc).__name__, exc)
        ih, iw = min(sizes)
        if min(ih, iw) < MIN_IMAGE_SIDE:
            problem = f"is {ih}x{iw} (h x w), smaller than one {MIN_IMAGE_SIDE} px patch; remove the pair"
            return "image_too_small", pair.image, problem
        if (h, w) not in sizes:
            problem = (
                f"is {h}x{w} (h x w) but its image {pair.image} is {ih}x{iw}; labels must have the image's "
                "size, fix or remove the pair"
            )
            return "size_mismatch", pair.label, problem
        return None

    def __len__(self) -> int:
        return len(self._pairs)

    @property
    def files(self) -> list[tuple[str, str]]:
        """``(image, label)`` paths of the usable pairs, in sample order."""
        return [(p.image, p.label) for p in self._pairs]

    def _where(self, index: int) -> tuple[str, str]:
        pair = self._pairs[index]
        return pair.image, pair.key

    def _keep(self, indices: list[int]) -> None:
        self._pairs = [self._pairs[i] for i in indices]

    def _read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        pair = self._pairs[index]

        def bad(kind: str, file: str, problem: str) -> BadDataError:
            return self._error(kind, f"{file} {problem}, {_SKIP_HINT}", file, pair.key)

        try:
            raw = read_label(pair.label)
        except BadDataError as exc:  # not single-channel
            raise bad("label_not_indices", pair.label, str(exc).removeprefix(f"{pair.label} ")) from exc
        except _DECODE_ERRORS as exc:
            problem = f"cannot be decoded ({type(exc).__name__}: {exc}); replace it or remove the pair"
            raise bad("corrupt_label", pair.label, problem) from exc
        try:
            label = self.mapping(raw)
        except ValueError as exc:
            fix = "check num_classes / reduce_zero_label / ignore_index or fix the file"
            message = f"{pair.label}: {exc}; {fix}, {_SKIP_HINT}"
            raise self._error("label_out_of_range", message, pair.label, pair.key) from exc
        if self.train and self._all_ignored(label):
            message = (
                f"{pair.label} {self._all_ignored_problem(raw)}: it has nothing to learn (and a batch of "
                f"such crops no loss); fix the file or the label settings, or remove the pair, {_SKIP_HINT}"
            )
            raise self._error("label_all_ignored", message, pair.label, pair.key)
        try:
            image = read_image(pair.image, expected_hw=label.shape[:2])
        except _DECODE_ERRORS as exc:
            problem = f"cannot be decoded ({type(exc).__name__}: {exc}); replace it or remove the pair"
            raise bad("corrupt_image", pair.image, problem) from exc
        if image.shape[:2] != label.shape[:2]:
            problem = (
                f"is {label.shape[0]}x{label.shape[1]} (h x w) but its image {pair.image} is "
                f"{image.shape[0]}x{image.shape[1]}; fix or remove the pair"
            )
            raise bad("size_mismatch", pair.label, problem)
        return image, label

    def _all_ignored(self, label: np.ndarray) -> bool:
        """Whether every pixel of a mapped label is ``ignore_index``."""
        return bool((label == self.mapping.ignore_index).all())

    def _all_ignored_problem(self, raw: np.ndarray) -> str:
        """What is wrong with a label whose every pixel maps to ``ignore_index`` (``raw``: as stored)."""
        stored = np.unique(raw)
        values = ", ".join(str(int(v)) for v in stored[:10])
        zero = (
            " (reduce_zero_label maps 0 to it: is 0 a class of this data set, not 'other'?)"
            if self.mapping.reduce_zero_label and stored[0] == 0
            else ""
        )
        ignore = self.mapping.ignore_index
        return f"has only the values {{{values}}}, all mapped to ignore_index={ignore}{zero}"

    def _notes(self, index: int) -> list[Finding]:
        pair = self._pairs[index]
        with Image.open(pair.label) as label:  # the header only: loading orients the image to fit the label
            expected_hw = (label.height, label.width)
        notes = [
            Finding(kind, f"{pair.image} {what}", pair.image, pair.key, severity="note")
            for kind, what in image_conversions(pair.image, expected_hw=expected_hw)
        ]
        if not self.train:  # training refuses such a pair when loading it; evaluation scores no pixel of it
            raw = read_label(pair.label)
            if self._all_ignored(self.mapping(raw)):
                message = f"{pair.label} {self._all_ignored_problem(raw)}: no pixel of it is scored"
                notes.append(Finding("label_all_ignored", message, pair.label, pair.key, severity="note"))
        return notes

    def _sample(self, index: int, data: tuple[np.ndarray, np.ndarray]) -> tuple[torch.Tensor, dict[str, Any]]:
        image, label = data
        if self.train:
            out_image, out_label = self.transform(image, label)
            return out_image, {"label": out_label}
        out_image = self.transform(image)
        target = {
            "label": torch.from_numpy(label.astype(np.int64)),
            "orig_size": (int(label.shape[0]), int(label.shape[1])),
            "image_size": (int(out_image.shape[-2]), int(out_image.shape[-1])),
            "file_name": self._pairs[index].image,
        }
        return out_image, target


# ----------------------------------------------------------------------------------------------------
# DataModules
# ----------------------------------------------------------------------------------------------------


def _check_crop_size(crop_size: int, size_divisibility: int) -> None:
    if size_divisibility <= 0 or crop_size <= 0:
        raise ValueError(f"crop_size={crop_size}, size_divisibility={size_divisibility}: both must be > 0")
    if crop_size % size_divisibility:
        lower = crop_size // size_divisibility * size_divisibility
        upper = lower + size_divisibility
        nearest = f"{lower} or {upper}" if lower else f"{upper}"
        raise ValueError(
            f"crop_size={crop_size} is not a multiple of size_divisibility={size_divisibility} (the ViT "
            f"patch, so the crop is a whole number of patches); use {nearest}"
        )


class SegmentationFolderDataModule(SplitDataModule):
    """Semantic segmentation from an image folder and a label-PNG folder per split (matched by stem).

    Training uses the mmseg ADE20K pipeline (:class:`SegmentationTrainTransform`: random resize to
    ``scale x U(ratio_range)``, ``crop_size`` crop with ``cat_max_ratio``, flip, photometric distortion,
    padding); val/test/predict resize to fit ``scale`` (:class:`SegmentationEvalTransform`) and keep the
    label at the original resolution. Batches are padded by :func:`collate_segmentation` to multiples of
    ``size_divisibility``. ``num_classes``, ``class_names`` and ``ignore_index`` are set in ``__init__``
    (LightningCLI links ``num_classes`` into the model); the folders are scanned in ``setup``.

    Args:
        train_images: training image folder.
        train_labels: training label-PNG folder.
        val_images: validation image folder.
        val_labels: validation label-PNG folder.
        test_images: test image folder (default: ``val_images``).
        test_labels: test label folder (default: ``val_labels``).
        predict_images: an image file, a folder or a glob for ``predict``.
        predict_apply_exif: ``predict`` turns each image as its EXIF orientation says (how viewers show it,
            the default); False keeps the stored pixels, the frame of annotations made on them (training and
            evaluation follow the label PNGs' size whichever this is).
        num_classes: number of classes ``K`` (after ``reduce_zero_label``).
        class_names: ``K`` names (default ``"0"``, ``"1"``, ...).
        ignore_index: ignored / padding label, ``>= K``.
        reduce_zero_label: raw 0 -> ``ignore_index``, ``v`` -> ``v - 1`` (ADE20K).
        crop_size: training crop side ``C``; a multiple of ``size_divisibility`` (518 = 37 x 14).
        scale: ``(long, short)`` reference size of the resize (mmseg ADE20K ``(2048, 512)``).
        ratio_range: random factor range applied to ``scale`` in training.
        cat_max_ratio: largest share one class may take of a training crop (1 disables the check).
        batch_size: training batch size.
        eval_batch_size: val/test/predict batch size.
        num_workers: DataLoader workers (persistent when > 0).
        size_divisibility: batch sides are padded to a multiple of this (the ViT patch, 14).
        on_bad_data: ``"error"`` raises on the first bad record; ``"skip"`` drops, logs and counts them.
        check_data: before the first step, read every image and label PNG of the stage's splits once
            (:func:`~vitdense.datamodules.data_check.check_data`); ``"error"`` then fails with the whole
            report, ``"skip"`` logs it and trains without the bad pairs.
    """

    def __init__(
        self,
        train_images: str,
        train_labels: str,
        val_images: str,
        val_labels: str,
        num_classes: int,
        test_images: str | None = None,
        test_labels: str | None = None,
        predict_images: str | None = None,
        class_names: list[str] | None = None,
        ignore_index: int = 255,
        reduce_zero_label: bool = False,
        crop_size: int = 518,
        scale: tuple[int, int] = (2048, 512),
        ratio_range: tuple[float, float] = (0.5, 2.0),
        cat_max_ratio: float = 0.75,
        batch_size: int = 16,
        eval_batch_size: int = 1,
        num_workers: int = 4,
        size_divisibility: int = 14,
        on_bad_data: OnBadData = "error",
        check_data: bool = False,
        predict_apply_exif: bool = True,
    ) -> None:
        super().__init__()
        _check_crop_size(crop_size, size_divisibility)
        LabelMapping(num_classes, ignore_index, reduce_zero_label)  # validates num_classes / ignore_index
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(
                f"class_names has {len(class_names)} names but num_classes={num_classes}; give one name "
                "per class"
            )
        if len(scale) != 2 or min(scale) <= 0:
            raise ValueError(f"scale={scale}: give (long, short) positive sides, e.g. (2048, 512)")
        if len(ratio_range) != 2 or not 0 < ratio_range[0] <= ratio_range[1]:
            raise ValueError(f"ratio_range={ratio_range}: need 0 < low <= high, e.g. (0.5, 2.0)")
        if not 0 < cat_max_ratio <= 1:
            raise ValueError(f"cat_max_ratio={cat_max_ratio}: need 0 < cat_max_ratio <= 1 (1 disables it)")
        if batch_size < 1 or eval_batch_size < 1 or num_workers < 0:
            raise ValueError(
                f"batch_size={batch_size}, eval_batch_size={eval_batch_size} must be >= 1 and "
                f"num_workers={num_workers} >= 0"
            )
        if on_bad_data not in ("error", "skip"):
            raise ValueError(f"on_bad_data={on_bad_data!r}; use 'error' or 'skip'")
        self.save_hyperparameters()
        self.train_images = train_images
        self.train_labels = train_labels
        self.val_images = val_images
        self.val_labels = val_labels
        self.test_images = test_images if test_images is not None else val_images
        self.test_labels = test_labels if test_labels is not None else val_labels
        self.predict_images = predict_images
        self.num_classes = num_classes
        self.class_names = [str(i) for i in range(num_classes)] if class_names is None else list(class_names)
        self.ignore_index = ignore_index
        self.reduce_zero_label = reduce_zero_label
        self.crop_size = crop_size
        self.scale = (int(scale[0]), int(scale[1]))
        self.ratio_range = (float(ratio_range[0]), float(ratio_range[1]))
        self.cat_max_ratio = cat_max_ratio
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.size_divisibility = size_divisibility
        self.collate_fn = partial(collate_segmentation, size_divisibility=size_divisibility)
        self.on_bad_data = on_bad_data
        self.check_data = check_data
        self.predict_apply_exif = predict_apply_exif
        self.train_dataset: SegmentationFolder | None = None
        self.val_dataset: SegmentationFolder | None = None
        self.test_dataset: SegmentationFolder | None = None
        self.predict_dataset: PredictImages | None = None

    def split_source(self, split: str) -> tuple[str, str]:
        """``(image folder, label folder)`` of ``split`` (``"train"``, ``"val"`` or ``"test"``)."""
        return {
            "train": (self.train_images, self.train_labels),
            "val": (self.val_images, self.val_labels),
            "test": (self.test_images, self.test_labels),
        }[split]

    def split_dataset(self, split: str, on_bad_data: Policy) -> SegmentationFolder:
        """A new dataset of ``split``: the training transform for train, the evaluation one otherwise."""
        images, labels = self.split_source(split)
        if split == "train":
            transform = SegmentationTrainTransform(
                self.crop_size, self.scale, self.ratio_range, self.cat_max_ratio, self.ignore_index
            )
        else:
            transform = SegmentationEvalTransform(self.scale)
        return SegmentationFolder(
            images,
            labels,
            transform,
            num_classes=self.num_classes,
            ignore_index=self.ignore_index,
            reduce_zero_label=self.reduce_zero_label,
            on_bad_data=on_bad_data,
            split=split,
        )

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets ``stage`` needs (``fit``, ``validate``, ``test``, ``predict`` or None: all).

        The test split reuses the validation dataset when it has the same files.
        """
        self._setup_splits(stage)
        if stage in ("predict", None) and self.predict_dataset is None and self.predict_images is not None:
            self.predict_dataset = PredictImages(
                self.predict_images, SegmentationEvalTransform(self.scale), self.predict_apply_exif
            )
        if stage == "predict" and self.predict_images is None:
            raise ValueError("predict needs predict_images (an image file, a folder or a glob)")


def find_ade20k(root: str | Path) -> Path:
    """The ``ADEChallengeData2016`` folder: ``root/ADEChallengeData2016`` or ``root`` itself.

    Raises:
        FileNotFoundError: neither holds ``images/{training,validation}`` and
            ``annotations/{training,validation}``.
    """
    root = Path(root)
    needed = [f"{kind}/{split}" for kind in ("images", "annotations") for split in ("training", "validation")]
    for candidate in (root / "ADEChallengeData2016", root):
        if all((candidate / sub).is_dir() for sub in needed):
            return candidate
    raise FileNotFoundError(
        f"{root}: no ADE20K layout found (ADEChallengeData2016/images/{{training,validation}}/*.jpg and "
        "annotations/{training,validation}/*.png); pass the folder that contains ADEChallengeData2016/ "
        "(unzip ADEChallengeData2016.zip from the MIT SceneParsing benchmark there) or that folder itself"
    )


class ADE20KDataModule(SegmentationFolderDataModule):
    """ADE20K (ADEChallengeData2016, SceneParsing): 150 classes, 0 = "other" ignored.

    Training uses ``images/training`` + ``annotations/training``; validation and test use the
    ``validation`` split (the test server's labels are not public). ``reduce_zero_label`` is fixed on:
    raw 0 ("other") -> 255 (ignored), raw 1..150 -> 0..149 named by :data:`ADE20K_CLASSES`.

    Args:
        root: the folder containing ``ADEChallengeData2016/``, or that folder itself.
        Other arguments: as :class:`SegmentationFolderDataModule` (defaults: the mmseg ADE20K 512 x 512
            pipeline with a 518 = 37 x 14 crop).
    """

    def __init__(
        self,
        root: str,
        predict_images: str | None = None,
        crop_size: int = 518,
        scale: tuple[int, int] = (2048, 512),
        ratio_range: tuple[float, float] = (0.5, 2.0),
        cat_max_ratio: float = 0.75,
        batch_size: int = 16,
        eval_batch_size: int = 1,
        num_workers: int = 4,
        size_divisibility: int = 14,
        on_bad_data: OnBadData = "error",
        check_data: bool = False,
    ) -> None:
        base = find_ade20k(root)
        super().__init__(
            train_images=str(base / "images" / "training"),
            train_labels=str(base / "annotations" / "training"),
            val_images=str(base / "images" / "validation"),
            val_labels=str(base / "annotations" / "validation"),
            num_classes=len(ADE20K_CLASSES),
            predict_images=predict_images,
            class_names=ADE20K_CLASSES,
            ignore_index=255,
            reduce_zero_label=True,
            crop_size=crop_size,
            scale=scale,
            ratio_range=ratio_range,
            cat_max_ratio=cat_max_ratio,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            size_divisibility=size_divisibility,
            on_bad_data=on_bad_data,
            check_data=check_data,
        )
        self.root = root
