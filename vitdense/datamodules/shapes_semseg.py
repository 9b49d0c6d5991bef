"""The semantic segmentation set of coloured shapes (:mod:`~vitdense.datamodules.shapes`): demos, tests.

The same shapes and colours in the ADEChallengeData2016 layout, with label PNGs where 0 is background
("other" in ADE20K terms) and 1..4 the shapes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from vitdense.datamodules.shapes import SHAPE_COLOURS, shape_polygon, stamp_matches, textured_background

__all__ = ["SHAPES_SEMSEG_CLASSES", "prepared_shapes_semseg", "write_shapes_semseg"]

# Raw label values: 0 = background ("other" in ADE20K terms), 1..4 = the shapes.
SHAPES_SEMSEG_CLASSES: list[str] = ["background", "circle", "rectangle", "triangle", "diamond"]
_SEMSEG_SHAPE = {1: 1, 2: 3, 3: 7, 4: 8}  # raw label -> category id in SHAPE_COLOURS
_SEMSEG_VERSION = 1  # bump when the generator's output changes, so stale data sets are rewritten
_SEMSEG_STAMP = "shapes_semseg.json"
_SEMSEG_SPLITS = (("training", "train"), ("validation", "val"))  # folder, ADE file-name infix


def _write_semseg_split(
    base: Path, split: str, infix: str, num_images: int, image_size: tuple[int, int], rng: np.random.Generator
) -> None:
    images, labels = base / "images" / split, base / "annotations" / split
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    h, w = image_size
    short = min(h, w)
    for i in range(num_images):
        canvas = textured_background(rng, h, w, (6, 8))
        label = np.zeros((h, w), np.uint8)
        for _ in range(int(rng.integers(1, 5))):
            cls = int(rng.integers(1, 5))
            # 20-50 % of the short side (48-120 px at 240): large enough to learn in a few hundred steps.
            bw = float(rng.uniform(0.2, 0.5)) * short
            bh = float(rng.uniform(0.2, 0.5)) * short if cls == 2 else bw * float(rng.uniform(0.8, 1.2))
            x, y = float(rng.uniform(0, w - bw)), float(rng.uniform(0, h - bh))
            points = np.asarray(shape_polygon(_SEMSEG_SHAPE[cls], x, y, bw, bh)).reshape(-1, 2)
            mask = np.zeros((h, w), np.uint8)
            # 4 fractional bits: sub-pixel vertices, so shapes are not snapped to the pixel grid.
            cv2.fillPoly(mask, [np.round(points * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
            inside = mask.astype(bool)
            colour = np.clip(np.array(SHAPE_COLOURS[_SEMSEG_SHAPE[cls]]) + rng.integers(-25, 26, 3), 0, 255)
            canvas[inside] = colour + rng.normal(0, 5, (int(inside.sum()), 3))
            label[inside] = cls  # later shapes occlude earlier ones, in the image and the label alike
        name = f"ADE_{infix}_{i + 1:08d}"
        Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8)).save(images / f"{name}.jpg", quality=92)
        Image.fromarray(label).save(labels / f"{name}.png")


def _semseg_stamp(num_train: int, num_val: int, image_size: tuple[int, int], seed: int) -> dict[str, Any]:
    return {
        "version": _SEMSEG_VERSION,
        "num_train": num_train,
        "num_val": num_val,
        "image_size": list(image_size),
        "seed": seed,
    }


def write_shapes_semseg(
    root: str | Path,
    *,
    num_train: int = 200,
    num_val: int = 40,
    image_size: tuple[int, int] = (240, 320),
    seed: int = 0,
) -> Path:
    """Write the semantic shapes set under ``root/ADEChallengeData2016/`` (deterministic in ``seed``).

    Layout as ADE20K: ``images/{training,validation}/ADE_{train,val}_00000001.jpg`` and
    ``annotations/{training,validation}/ADE_{train,val}_00000001.png`` (8-bit mode ``L``). Label 0 is the
    textured background, 1..4 are circle, rectangle, triangle, diamond (1-4 shapes per image, each with
    its class colour jittered, later shapes occluding earlier ones). The default size is not a multiple of
    14 on purpose. Same arguments give byte-identical label PNGs.

    A folder written earlier by this function (it holds a stamp file) is replaced; a non-empty
    ``ADEChallengeData2016`` without the stamp is refused rather than overwritten.

    Args:
        root: output folder.
        num_train: training images.
        num_val: validation images.
        image_size: ``(height, width)``.
        seed: random seed.

    Returns:
        The ``root/ADEChallengeData2016`` folder.
    """
    base = Path(root) / "ADEChallengeData2016"
    stamp_file = base / _SEMSEG_STAMP
    split_dirs = [base / kind / split for kind in ("images", "annotations") for split, _ in _SEMSEG_SPLITS]
    if not stamp_file.is_file() and any(d.is_dir() and any(d.iterdir()) for d in split_dirs):
        raise FileExistsError(
            f"{base} holds data that write_shapes_semseg did not write (no {_SEMSEG_STAMP}); refusing to "
            "overwrite it, choose another root"
        )
    stamp_file.unlink(missing_ok=True)  # a crash while writing leaves no stamp, so the set is rewritten
    for d in split_dirs:
        shutil.rmtree(d, ignore_errors=True)  # stale files would otherwise be matched as samples
    for offset, ((split, infix), n) in enumerate(zip(_SEMSEG_SPLITS, (num_train, num_val))):
        _write_semseg_split(base, split, infix, n, image_size, np.random.default_rng([seed, offset]))
    # Written last: a stamp that matches means a complete data set with these parameters.
    stamp_file.write_text(json.dumps(_semseg_stamp(num_train, num_val, image_size, seed)))
    return base


def prepared_shapes_semseg(
    root: str | Path, *, num_train: int, num_val: int, image_size: tuple[int, int], seed: int
) -> Path:
    """The ``root/ADEChallengeData2016`` folder of the semantic shapes set, written first unless a complete
    set with these parameters is there."""
    base = Path(root) / "ADEChallengeData2016"
    if not stamp_matches(base / _SEMSEG_STAMP, _semseg_stamp(num_train, num_val, image_size, seed)):
        write_shapes_semseg(root, num_train=num_train, num_val=num_val, image_size=image_size, seed=seed)
    return base
