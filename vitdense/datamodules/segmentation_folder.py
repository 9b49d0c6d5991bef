"""One split of a semantic segmentation data set: an image folder and a label-PNG folder matched by stem."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vitdense.datamodules.bad_data import DECODE_ERRORS as _DECODE_ERRORS
from vitdense.datamodules.bad_data import MIN_IMAGE_SIDE, BadDataError, CheckedDataset, Finding, Policy
from vitdense.datamodules.bad_data import SKIP_HINT as _SKIP_HINT
from vitdense.datamodules.images import IMAGE_EXTENSIONS, image_conversions, image_sizes, read_image
from vitdense.datamodules.segmentation_labels import LabelMapping, _label_mode_problem, read_label
from vitdense.datamodules.segmentation_transforms import SegmentationEvalTransform, SegmentationTrainTransform

__all__ = ["SegmentationFolder"]


@dataclass
class _Pair:
    key: str  # relative path without suffix
    image: str
    label: str


def _index_folder(folder: Path, suffixes: tuple[str, ...], argument: str) -> dict[str, list[Path]]:
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder}: folder not found; check the {argument} argument (a split is an image folder and a "
            "label-PNG folder whose files match by relative path and stem)"
        )
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

    def _sample(
        self, index: int, data: tuple[np.ndarray, np.ndarray], seed: int | None
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        image, label = data
        if self.train:
            out_image, out_label = self.transform(image, label, seed)
            return out_image, {"label": out_label}
        out_image = self.transform(image)
        target = {
            "label": torch.from_numpy(label.astype(np.int64)),
            "orig_size": (int(label.shape[0]), int(label.shape[1])),
            "image_size": (int(out_image.shape[-2]), int(out_image.shape[-1])),
            "file_name": self._pairs[index].image,
        }
        return out_image, target
