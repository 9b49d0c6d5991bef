"""The coloured shapes of the synthetic data sets: their categories, outlines, colours and backgrounds.

Four classes with non-contiguous COCO category ids (circle 1, rectangle 3, triangle 7, diamond 8), each
with its own outline and class colour, drawn on a textured background. :mod:`~vitdense.datamodules.
shapes_coco` writes them as a COCO detection set, :mod:`~vitdense.datamodules.shapes_semseg` as a
semantic one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

__all__ = ["SHAPES_CATEGORIES", "SHAPE_COLOURS", "shape_polygon", "stamp_matches", "textured_background"]

SHAPES_CATEGORIES: list[dict[str, Any]] = [
    {"id": 1, "name": "circle", "supercategory": "shape"},
    {"id": 3, "name": "rectangle", "supercategory": "shape"},
    {"id": 7, "name": "triangle", "supercategory": "shape"},
    {"id": 8, "name": "diamond", "supercategory": "shape"},
]
# RGB of each category id; every object jitters its own.
SHAPE_COLOURS = {1: (215, 45, 45), 3: (40, 185, 60), 7: (45, 85, 225), 8: (235, 200, 35)}


def shape_polygon(category_id: int, x: float, y: float, w: float, h: float) -> list[float]:
    """The outline of shape ``category_id`` in the box ``(x, y, w, h)`` (absolute pixels), as a flat COCO
    polygon ``[x1, y1, x2, y2, ...]`` rounded to 2 decimals (a circle is a 32-gon)."""
    if category_id == 1:  # circle: 32-gon inscribed in the box
        t = np.linspace(0, 2 * np.pi, 32, endpoint=False)
        pts = np.stack([x + w / 2 + w / 2 * np.cos(t), y + h / 2 + h / 2 * np.sin(t)], axis=1)
    elif category_id == 3:
        pts = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]])
    elif category_id == 7:
        pts = np.array([[x + w / 2, y], [x + w, y + h], [x, y + h]])
    else:
        pts = np.array([[x + w / 2, y], [x + w, y + h / 2], [x + w / 2, y + h], [x, y + h / 2]])
    return [round(float(v), 2) for v in pts.reshape(-1)]


def textured_background(
    rng: np.random.Generator, height: int, width: int, blotches: tuple[int, int]
) -> np.ndarray:
    """A float32 ``(height, width, 3)`` RGB canvas (values around 70-150, not clipped): a random base colour,
    smooth blotches interpolated from a ``blotches`` (rows, columns) grid of noise, and per-pixel grain."""
    base = rng.integers(70, 150, 3).astype(np.float32)
    coarse = rng.normal(0, 18, (*blotches, 3)).astype(np.float32)
    smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    grain = rng.normal(0, 6, (height, width, 3)).astype(np.float32)
    return base + smooth + grain


def stamp_matches(stamp_file: Path, stamp: dict[str, Any]) -> bool:
    """Whether ``stamp_file`` holds ``stamp``: a writer writes its stamp last, so a matching one marks a
    complete data set written with these parameters."""
    return stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp
