"""The detections of many images in a few growing buffers: what :class:`CocoEvaluator` keeps per image."""

from array import array
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ImageResults:
    """One image's detections in COCO's results form, as arrays.

    Attributes:
        boxes: float32 (N, 4) ``x, y, w, h`` in original image pixels (``w, h`` computed in float32).
        scores: float32 (N,).
        category_ids: int64 (N,) dataset category ids.
        mask_size: ``(height, width)`` of the masks' frame; None without masks.
        mask_counts: each mask's compressed COCO RLE counts (ASCII bytes); None without masks.
        mask_areas: int64 (N,) foreground pixels of each mask (pycocotools' ``area``); None without masks.
    """

    boxes: np.ndarray
    scores: np.ndarray
    category_ids: np.ndarray
    mask_size: tuple[int, int] | None = None
    mask_counts: tuple[bytes, ...] | None = None
    mask_areas: np.ndarray | None = None


class DetectionStore:
    """The detections of many images, appended to a few growing buffers, read back as :class:`ImageResults`.

    No object per detection, and none per image on the allocator's heap: small arrays kept for every image
    sit between the large blocks that come and go with each image (its full-size masks) and stop the
    allocator from reusing their space; kept so, a COCO val2017-sized evaluation grew by 6.7 MB per image.
    An image added again replaces its earlier entry.
    """

    def __init__(self) -> None:
        self._entries: dict[int, int] = {}  # image id -> index of its latest entry
        self._detection_ends = array("q", [0])  # per entry
        self._mask_sizes = array("q")  # height, width per entry (0, 0 without masks)
        self._boxes = array("f")  # x, y, w, h per detection
        self._scores = array("f")
        self._category_ids = array("q")
        self._mask_areas = array("q")
        self._count_ends = array("q", [0])  # per detection with a mask
        self._counts = bytearray()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._entries

    def image_ids(self) -> list[int]:
        return sorted(self._entries)

    def category_counts(self) -> dict[int, int]:
        """The number of detections of each category id, over the images held (each image's latest entry)."""
        parts = [self.category_ids(image_id) for image_id in self._entries]
        category_ids, counts = np.unique(np.concatenate([np.zeros(0, np.int64), *parts]), return_counts=True)
        return dict(zip(category_ids.tolist(), counts.tolist(), strict=True))

    def category_ids(self, image_id: int) -> np.ndarray:
        """int64 (N,): the category id of each of the image's detections, without reading the rest."""
        entry = self._entries[image_id]
        return np.array(self._category_ids[self._detection_ends[entry] : self._detection_ends[entry + 1]])

    def add(self, image_id: int, results: ImageResults) -> None:
        self._entries[image_id] = len(self._detection_ends) - 1
        self._detection_ends.append(self._detection_ends[-1] + len(results.scores))
        self._boxes.frombytes(np.ascontiguousarray(results.boxes, np.float32).tobytes())
        self._scores.frombytes(np.ascontiguousarray(results.scores, np.float32).tobytes())
        self._category_ids.frombytes(np.ascontiguousarray(results.category_ids, np.int64).tobytes())
        self._mask_sizes.extend(results.mask_size or (0, 0))
        if results.mask_counts is not None and results.mask_areas is not None:
            self._mask_areas.frombytes(np.ascontiguousarray(results.mask_areas, np.int64).tobytes())
            lengths = np.cumsum([len(counts) for counts in results.mask_counts], dtype=np.int64)
            self._count_ends.frombytes((lengths + self._count_ends[-1]).tobytes())
            self._counts += b"".join(results.mask_counts)

    def extend(self, other: "DetectionStore") -> None:
        for image_id in other.image_ids():
            self.add(image_id, other[image_id])

    def __getitem__(self, image_id: int) -> ImageResults:
        return self.get(image_id)

    def get(self, image_id: int, indices: list[int] | None = None) -> ImageResults:
        """The image's detections; with ``indices``, those at these positions only (the others' masks are not
        read)."""
        entry = self._entries[image_id]
        start, end = self._detection_ends[entry], self._detection_ends[entry + 1]
        height, width = self._mask_sizes[2 * entry], self._mask_sizes[2 * entry + 1]
        chosen = slice(None) if indices is None else indices
        masks: dict[str, Any] = {}
        if len(self._count_ends) > 1:  # detections with masks were added
            ends = self._count_ends[start : end + 1]
            positions = range(end - start) if indices is None else indices
            counts = tuple(bytes(self._counts[ends[i] : ends[i + 1]]) for i in positions)
            areas = np.array(self._mask_areas[start:end], np.int64)[chosen]
            masks = {"mask_size": (height, width), "mask_counts": counts, "mask_areas": areas}
        return ImageResults(
            boxes=np.array(self._boxes[4 * start : 4 * end], np.float32).reshape(-1, 4)[chosen],
            scores=np.array(self._scores[start:end], np.float32)[chosen],
            category_ids=np.array(self._category_ids[start:end], np.int64)[chosen],
            **masks,
        )
