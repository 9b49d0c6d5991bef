"""The COCO detection set of coloured shapes (:mod:`~vitdense.datamodules.shapes`), for demos and tests.

1-4 objects of 30-110 px per 224 px image on a textured background. Masks are stored as polygons for some
instances and compressed RLE for others; every tenth image (index 2, 12, ...) also has a crowd region
(uncompressed RLE, ``iscrowd=1``) and every tenth (index 1, 11, ...) has no annotation at all.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from vitdense.datamodules.shapes import (
    SHAPE_COLOURS,
    SHAPES_CATEGORIES,
    shape_polygon,
    stamp_matches,
    textured_background,
)

__all__ = ["prepared_shapes_coco", "write_shapes_coco"]

_VERSION = 1  # bump when the generator's output changes, so stale data sets are rewritten
_STAMP = "shapes.json"  # in root/annotations


def _uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO uncompressed RLE: column-major run lengths, starting with a run of zeros."""
    flat = mask.reshape(-1, order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    counts = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    if flat[0] == 1:
        counts = [0, *counts]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def _tight_box(mask: np.ndarray) -> list[float]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]


def _free(box: tuple[float, float, float, float], taken: list[tuple[float, float, float, float]]) -> bool:
    x, y, w, h = box
    margin = 3
    return all(
        x + w + margin <= a or a + c + margin <= x or y + h + margin <= b or b + d + margin <= y
        for a, b, c, d in taken
    )


def _write_split(root: Path, split: str, num_images: int, image_size: int, rng: np.random.Generator) -> Path:
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    f = image_size / 224  # object sizes are specified for a 224 px image
    images, annotations = [], []
    for i in range(num_images):
        image_id = i + 1
        file_name = f"{split}/{image_id:06d}.jpg"
        canvas = textured_background(rng, image_size, image_size, (6, 6))
        taken: list[tuple[float, float, float, float]] = []
        num_objects = 0 if i % 10 == 1 else int(rng.integers(1, 5))
        objects = [int(rng.choice([1, 3, 7, 8])) for _ in range(num_objects)]
        for cid in objects:
            for _ in range(30):  # rejection sampling keeps objects apart, so masks need no occlusion handling
                w = float(rng.integers(30, 111)) * f
                h = float(rng.integers(30, 111)) * f if cid == 3 else w * float(rng.uniform(0.8, 1.2))
                h = min(h, 110 * f)
                x, y = float(rng.uniform(2, image_size - w - 2)), float(rng.uniform(2, image_size - h - 2))
                if _free((x, y, w, h), taken):
                    break
            else:
                continue
            taken.append((x, y, w, h))
            poly = shape_polygon(cid, x, y, w, h)
            mask = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([poly], image_size, image_size)))
            colour = np.clip(np.array(SHAPE_COLOURS[cid]) + rng.integers(-25, 26, 3), 0, 255)
            canvas[mask.astype(bool)] = colour + rng.normal(0, 5, (int(mask.sum()), 3))
            if rng.random() < 0.5:
                segmentation: Any = [poly]
            else:
                rle = mask_utils.encode(np.asfortranarray(mask))
                segmentation = {"size": [image_size, image_size], "counts": rle["counts"].decode("ascii")}
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cid,
                    "bbox": _tight_box(mask),
                    "area": float(mask.sum()),
                    "segmentation": segmentation,
                    "iscrowd": 0,
                }
            )
        if i % 10 == 2:
            # A crowd: a cluster of small circles annotated as one region, as COCO does for crowds.
            for _ in range(50):
                side = 44 * f
                x = float(rng.uniform(2, image_size - side - 2))
                y = float(rng.uniform(2, image_size - side - 2))
                if _free((x, y, side, side), taken):
                    break
            else:
                x = y = None
            if x is not None:
                mask = np.zeros((image_size, image_size), np.uint8)
                for _ in range(int(rng.integers(4, 7))):
                    r = float(rng.uniform(3, 6)) * f
                    cx, cy = x + r + rng.uniform(0, side - 2 * r), y + r + rng.uniform(0, side - 2 * r)
                    cv2.circle(mask, (round(cx), round(cy)), round(r), 1, thickness=-1)
                canvas[mask.astype(bool)] = np.array(SHAPE_COLOURS[1]) + rng.normal(
                    0, 5, (int(mask.sum()), 3)
                )
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": 1,
                        "bbox": _tight_box(mask),
                        "area": float(mask.sum()),
                        "segmentation": _uncompressed_rle(mask),
                        "iscrowd": 1,
                    }
                )
        pixels = np.clip(canvas, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "images" / file_name, quality=92)
        images.append({"id": image_id, "file_name": file_name, "height": image_size, "width": image_size})
    data = {
        "info": {"description": f"vitdense synthetic shapes ({split})", "version": str(_VERSION)},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": SHAPES_CATEGORIES,
    }
    out = root / "annotations" / f"instances_{split}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":")))
    os.replace(tmp, out)  # atomic: a concurrent reader never sees half a file
    return out


def _stamp(num_train: int, num_val: int, image_size: int, seed: int) -> dict[str, int]:
    return {
        "version": _VERSION,
        "num_train": num_train,
        "num_val": num_val,
        "image_size": image_size,
        "seed": seed,
    }


def _paths(root: Path) -> dict[str, Path]:
    return {
        "train_images": root / "images",
        "train_annotations": root / "annotations" / "instances_train.json",
        "val_images": root / "images",
        "val_annotations": root / "annotations" / "instances_val.json",
    }


def write_shapes_coco(
    root: str | Path, *, num_train: int = 200, num_val: int = 50, image_size: int = 224, seed: int = 0
) -> dict[str, Path]:
    """Write the shapes data set under ``root`` (deterministic: same arguments give byte-identical JSON).

    Layout: ``root/images/{train,val}/000001.jpg`` (``file_name`` is ``"train/000001.jpg"``, relative to
    ``root/images``) and ``root/annotations/instances_{train,val}.json``.

    Args:
        root: output folder.
        num_train: training images (use >= 3 to get an empty image and a crowd region).
        num_val: validation images (same).
        image_size: side of the square images; object sizes scale with it (30-110 px at 224).
        seed: random seed.

    Returns:
        ``{"train_images", "train_annotations", "val_images", "val_annotations"}`` paths, usable as
        ``CocoDataModule(**paths)``.
    """
    root = Path(root)
    for split, n, offset in (("train", num_train, 0), ("val", num_val, 1)):
        _write_split(root, split, n, image_size, np.random.default_rng([seed, offset]))
    # Written last: a stamp that matches means a complete data set with these parameters.
    stamp = _stamp(num_train, num_val, image_size, seed)
    (root / "annotations" / _STAMP).write_text(json.dumps(stamp))
    return _paths(root)


def prepared_shapes_coco(
    root: str | Path, *, num_train: int, num_val: int, image_size: int, seed: int
) -> dict[str, Path]:
    """The paths of the shapes set under ``root`` (as :func:`write_shapes_coco` returns them), written first
    unless a complete set with these parameters is there."""
    root = Path(root)
    paths = _paths(root)
    fresh = (
        stamp_matches(root / "annotations" / _STAMP, _stamp(num_train, num_val, image_size, seed))
        and paths["train_annotations"].is_file()
        and paths["val_annotations"].is_file()
    )
    if not fresh:
        write_shapes_coco(root, num_train=num_train, num_val=num_val, image_size=image_size, seed=seed)
    return paths
