"""Tiny deterministic data sets of coloured shapes, for demos and tests: COCO detection and semantic.

Four classes with non-contiguous category ids (circle 1, rectangle 3, triangle 7, diamond 8), each with
its own shape and a jittered class colour, 1-4 objects of 30-110 px per 224 px image on a textured
background. Masks are stored as polygons for some instances and compressed RLE for others; every tenth
image (index 2, 12, ...) also has a crowd region (uncompressed RLE, ``iscrowd=1``) and every tenth
(index 1, 11, ...) has no annotation at all.

The semantic version (:func:`write_shapes_semseg`) uses the same shapes and colours in the
ADEChallengeData2016 layout, with label PNGs where 0 is background ("other") and 1..4 the shapes.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from vitdense.datamodules.ade20k import ade20k_split_folders
from vitdense.datamodules.bad_data import OnBadData
from vitdense.datamodules.coco import CocoDataModule
from vitdense.datamodules.segmentation import SegmentationFolderDataModule, pipeline_options

__all__ = [
    "SHAPES_CATEGORIES",
    "SHAPES_SEMSEG_CLASSES",
    "ShapesDataModule",
    "ShapesSegmentationDataModule",
    "write_shapes_coco",
    "write_shapes_semseg",
]

SHAPES_CATEGORIES: list[dict[str, Any]] = [
    {"id": 1, "name": "circle", "supercategory": "shape"},
    {"id": 3, "name": "rectangle", "supercategory": "shape"},
    {"id": 7, "name": "triangle", "supercategory": "shape"},
    {"id": 8, "name": "diamond", "supercategory": "shape"},
]
_COLOURS = {1: (215, 45, 45), 3: (40, 185, 60), 7: (45, 85, 225), 8: (235, 200, 35)}
_VERSION = 1  # bump when the generator's output changes, so stale data sets are rewritten


def _polygon(category_id: int, x: float, y: float, w: float, h: float) -> list[float]:
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


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    base = rng.integers(70, 150, 3).astype(np.float32)
    coarse = rng.normal(0, 18, (6, 6, 3)).astype(np.float32)
    blotches = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    grain = rng.normal(0, 6, (size, size, 3)).astype(np.float32)
    return base + blotches + grain


def _write_split(root: Path, split: str, num_images: int, image_size: int, rng: np.random.Generator) -> Path:
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    f = image_size / 224  # object sizes are specified for a 224 px image
    images, annotations = [], []
    for i in range(num_images):
        image_id = i + 1
        file_name = f"{split}/{image_id:06d}.jpg"
        canvas = _background(rng, image_size)
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
            poly = _polygon(cid, x, y, w, h)
            mask = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([poly], image_size, image_size)))
            colour = np.clip(np.array(_COLOURS[cid]) + rng.integers(-25, 26, 3), 0, 255)
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
                canvas[mask.astype(bool)] = np.array(_COLOURS[1]) + rng.normal(0, 5, (int(mask.sum()), 3))
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
    (root / "annotations" / "shapes.json").write_text(json.dumps(stamp))
    return _paths(root)


class ShapesDataModule(CocoDataModule):
    """:class:`CocoDataModule` on the synthetic shapes set, written under ``root`` if missing or stale.

    Args:
        root: data folder (written on first use; reused when its parameters match).
        num_train: training images.
        num_val: validation images.
        seed: generator seed.
        min_scale: defaults to 0.5 rather than COCO's 0.1, which would shrink 30 px shapes to 3 px.
        max_scale: largest jitter factor.
        Other arguments: as :class:`CocoDataModule`; images are written at 224 px.
    """

    def __init__(
        self,
        root: str = "data/shapes",
        num_train: int = 200,
        num_val: int = 50,
        seed: int = 0,
        predict_images: str | None = None,
        image_size: int = 224,
        size_divisibility: int = 56,
        batch_size: int = 4,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        masks: bool = True,
        keep_empty_images: bool = True,
        min_scale: float = 0.5,
        max_scale: float = 1.5,
        on_bad_data: OnBadData = "error",
        check_data: bool = False,
    ) -> None:
        root_path = Path(root)
        paths = _paths(root_path)
        stamp_file = root_path / "annotations" / "shapes.json"
        stamp = _stamp(num_train, num_val, 224, seed)
        fresh = (
            stamp_file.is_file()
            and json.loads(stamp_file.read_text()) == stamp
            and paths["train_annotations"].is_file()
            and paths["val_annotations"].is_file()
        )
        if not fresh:
            write_shapes_coco(root_path, num_train=num_train, num_val=num_val, image_size=224, seed=seed)
        super().__init__(
            train_images=str(paths["train_images"]),
            train_annotations=str(paths["train_annotations"]),
            val_images=str(paths["val_images"]),
            val_annotations=str(paths["val_annotations"]),
            predict_images=predict_images,
            image_size=image_size,
            size_divisibility=size_divisibility,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            masks=masks,
            keep_empty_images=keep_empty_images,
            min_scale=min_scale,
            max_scale=max_scale,
            on_bad_data=on_bad_data,
            check_data=check_data,
        )
        self.root = root


# ----------------------------------------------------------------------------------------------------
# Semantic segmentation (ADEChallengeData2016 layout)
# ----------------------------------------------------------------------------------------------------

# Raw label values: 0 = background ("other" in ADE20K terms), 1..4 = the shapes.
SHAPES_SEMSEG_CLASSES: list[str] = ["background", "circle", "rectangle", "triangle", "diamond"]
_SEMSEG_SHAPE = {1: 1, 2: 3, 3: 7, 4: 8}  # raw label -> the COCO category id used by _polygon/_COLOURS
_SEMSEG_VERSION = 1  # bump when the generator's output changes, so stale data sets are rewritten
_SEMSEG_STAMP = "shapes_semseg.json"
_SEMSEG_SPLITS = (("training", "train"), ("validation", "val"))  # folder, ADE file-name infix


def _semseg_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = rng.integers(70, 150, 3).astype(np.float32)
    coarse = rng.normal(0, 18, (6, 8, 3)).astype(np.float32)
    blotches = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    grain = rng.normal(0, 6, (h, w, 3)).astype(np.float32)
    return base + blotches + grain


def _write_semseg_split(
    base: Path, split: str, infix: str, num_images: int, image_size: tuple[int, int], rng: np.random.Generator
) -> None:
    images, labels = base / "images" / split, base / "annotations" / split
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    h, w = image_size
    short = min(h, w)
    for i in range(num_images):
        canvas = _semseg_background(rng, h, w)
        label = np.zeros((h, w), np.uint8)
        for _ in range(int(rng.integers(1, 5))):
            cls = int(rng.integers(1, 5))
            # 20-50 % of the short side (48-120 px at 240): large enough to learn in a few hundred steps.
            bw = float(rng.uniform(0.2, 0.5)) * short
            bh = float(rng.uniform(0.2, 0.5)) * short if cls == 2 else bw * float(rng.uniform(0.8, 1.2))
            x, y = float(rng.uniform(0, w - bw)), float(rng.uniform(0, h - bh))
            points = np.asarray(_polygon(_SEMSEG_SHAPE[cls], x, y, bw, bh)).reshape(-1, 2)
            mask = np.zeros((h, w), np.uint8)
            # 4 fractional bits: sub-pixel vertices, so shapes are not snapped to the pixel grid.
            cv2.fillPoly(mask, [np.round(points * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
            inside = mask.astype(bool)
            colour = np.clip(np.array(_COLOURS[_SEMSEG_SHAPE[cls]]) + rng.integers(-25, 26, 3), 0, 255)
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


class ShapesSegmentationDataModule(SegmentationFolderDataModule):
    """:class:`SegmentationFolderDataModule` on the semantic shapes set, written under ``root`` if missing.

    Images are 240 x 320 (h x w); the defaults scale the mmseg pipeline down for a cheap CPU demo:
    ``scale=(320, 240)`` (eval images keep their size), random resize ``x [0.5, 2]`` and 224 = 16 x 14
    crops.

    Background is kept as class 0 by default (``reduce_zero_label=False``: 5 classes, ``"background"``
    first): unlike ADE20K's "other", it is one well-defined textured region, and learning it makes the
    demo's mIoU cover every pixel. With ``reduce_zero_label=True`` it is ignored instead and the 4 shapes
    are classes 0..3, the ADE20K convention.

    Args:
        root: data folder; the set lives in ``root/ADEChallengeData2016`` (reused when its stamp matches).
        num_train: training images.
        num_val: validation images.
        seed: generator seed.
        Other arguments: as :class:`SegmentationFolderDataModule`.
    """

    def __init__(
        self,
        root: str = "data/shapes_semseg",
        num_train: int = 200,
        num_val: int = 40,
        seed: int = 0,
        predict_images: str | None = None,
        reduce_zero_label: bool = False,
        crop_size: int = 224,
        scale: tuple[int, int] = (320, 240),
        ratio_range: tuple[float, float] = (0.5, 2.0),
        cat_max_ratio: float = 0.75,
        batch_size: int = 8,
        eval_batch_size: int = 1,
        num_workers: int = 2,
        size_divisibility: int = 14,
        on_bad_data: OnBadData = "error",
        check_data: bool = False,
    ) -> None:
        image_size = (240, 320)
        base = Path(root) / "ADEChallengeData2016"
        stamp_file = base / _SEMSEG_STAMP
        fresh = stamp_file.is_file() and json.loads(stamp_file.read_text()) == _semseg_stamp(
            num_train, num_val, image_size, seed
        )
        if not fresh:
            write_shapes_semseg(root, num_train=num_train, num_val=num_val, image_size=image_size, seed=seed)
        names = SHAPES_SEMSEG_CLASSES[1:] if reduce_zero_label else SHAPES_SEMSEG_CLASSES
        super().__init__(
            **ade20k_split_folders(base),
            num_classes=len(names),
            class_names=list(names),
            ignore_index=255,
            reduce_zero_label=reduce_zero_label,
            **pipeline_options(locals()),
        )
        self.root = root
