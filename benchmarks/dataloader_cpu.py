"""Training input pipelines on the CPU: samples/s per DataLoader worker, against what the GPU needs.

Issue 4 asks that the CPU input pipeline sustain at least twice the H100 training rate with 16 workers. Per
worker that is ``2 x rate / 16``: Mask R-CNN 2 x 24 / 16 = 3.0 samples/s, Faster R-CNN 2 x 26 / 16 = 3.25,
semantic segmentation 2 x 120 / 16 = 15.

Each pipeline is the kit's own, configured as its recipe: ``CocoDataModule`` with ``image_size=1008``,
``min_scale=0.1``, ``max_scale=2.0`` and ``masks`` on (recipes/coco_mask_rcnn.yaml) or off
(recipes/coco_faster_rcnn.yaml); ``ADE20KDataModule`` with a 518 crop, ``scale=(2048, 512)``,
``ratio_range=(0.5, 2.0)``, ``cat_max_ratio=0.75`` (recipes/ade20k_semseg.yaml). Batches come from the
DataModule's ``train_dataloader()`` (seeded sampler, per-sample augmentation seeds), so image and label
decoding, polygon rasterisation, augmentation and collation are all counted. The batch is the GPU
benchmark's: 8 canvases, 16 crops.

The data are generated into a temporary folder (deterministic, offline): COCO-like JPEGs of 480-640 x 427-640
px at quality 90 (about 140 KB: multi-scale noise with painted objects), 80 categories, on average 7.3 polygon
instances per image (COCO's mean) with COCO's mix of small, medium and large objects, some in several parts,
and a crowd RLE on every tenth image; a variant has 20 instances on every image (as the GPU benchmark's
batches), and another 20 instances on 12-megapixel phone photos (4032 x 3024 JPEGs, objects scaled with the
image), the custom datasets whose masks cost the most to decode. ADE-like: an ADEChallengeData2016 folder of
JPEGs, mostly 512 x 683 (h x w), and 8-bit label PNGs of 10-24 irregular regions plus small objects, values
0..150. A few hundred distinct images are drawn and listed many times over (hard links, own ids), so that an
epoch outlasts a measurement.

Rows (one JSON line each): the DataLoader with ``num_workers=0`` on one thread (``torch.set_num_threads(1)``;
the kit runs OpenCV sequentially), i.e. ``__getitem__`` + collate in this process: the rate of one worker
without the inter-process transfer. Then the same DataLoader with ``--workers`` processes (persistent, as
the DataModule makes them), whose rate per worker includes the transfer of batches through shared memory.
Each is timed over ``--repeats`` windows of ``--seconds`` after a warm-up; ``spread`` is the slowest and
fastest window.

    python benchmarks/dataloader_cpu.py --tiny     # a quick check of the script (well under 2 minutes)
    python benchmarks/dataloader_cpu.py            # the numbers in benchmarks/README.md (~6 minutes)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from pycocotools import mask as mask_utils  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from vitdense.datamodules import ADE20KDataModule, CocoDataModule  # noqa: E402
from vitdense.datamodules.loading import SplitDataModule  # noqa: E402

COCO_MEAN_INSTANCES = 7.3  # non-crowd instances per train2017 image
JPEG_QUALITY = 90


# ----------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------


def _texture(rng: np.random.Generator, h: int, w: int, grain: float) -> np.ndarray:
    """``float32`` ``(h, w, 3)`` noise over four octaves plus per-pixel grain (which sets the JPEG size)."""
    out = np.zeros((h, w, 3), np.float32) + rng.uniform(60, 190, 3).astype(np.float32)
    for cells, sigma in ((3, 40.0), (12, 22.0), (48, 12.0), (160, 6.0)):
        coarse = rng.normal(0, sigma, (cells, max(2, round(cells * w / h)), 3)).astype(np.float32)
        out += cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    return out + rng.normal(0, grain, (h, w, 3)).astype(np.float32)


def _save_jpeg(pixels: np.ndarray, path: Path) -> None:
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=JPEG_QUALITY)


def _object_polygons(rng: np.random.Generator, h: int, w: int, zoom: float = 1.0) -> list[list[float]]:
    """One object: 1 polygon (85 %) or 2-3 (an occluded object), COCO's small / medium / large mix
    (object sides x ``zoom`` for images ``zoom`` times COCO's size)."""
    # ~37 % < 32 px, ~30 % 32-96 px, ~33 % > 96 px at zoom 1
    side = zoom * math.exp(rng.uniform(math.log(8), math.log(320)))
    aspect = math.exp(rng.uniform(-0.7, 0.7))
    bw, bh = min(side * aspect, w - 1), min(side / aspect, h - 1)
    x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
    parts = 1 if rng.random() < 0.85 else int(rng.integers(2, 4))
    polygons = []
    for p in range(parts):
        # Parts side by side across the box, as an object cut by an occluder.
        px, pw = x + bw * p / parts, bw / parts
        n = int(np.clip(side / 4, 6, 40))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radius = rng.uniform(0.6, 1.0, n)
        xs = px + pw / 2 + np.cos(angles) * radius * pw / 2
        ys = y + bh / 2 + np.sin(angles) * radius * bh / 2
        points = np.stack([xs.clip(0, w), ys.clip(0, h)], axis=1)
        polygons.append([round(float(v), 2) for v in points.reshape(-1)])
    return polygons


def write_coco_like(
    root: Path, num_images: int, listed: int, instances: int | None, seed: int, photos: bool = False
) -> tuple[Path, Path]:
    """COCO-like JPEGs and ``instances.json`` under ``root``.

    ``num_images`` distinct images are drawn; the file lists ``listed`` images, each its own file (a hard
    link to one of the distinct ones) with its own image and annotation ids, so an epoch is long enough
    for a steady multi-worker measurement without drawing thousands of images.

    Args:
        root: output folder.
        num_images: distinct images.
        listed: image records in the file (>= ``num_images``).
        instances: objects on every image, or None for COCO's distribution (1 + Poisson(6.3), mean 7.3).
        seed: random seed.
        photos: 12-megapixel phone photos (4032 x 3024, landscape or portrait) with objects 6.3x COCO's
            size, instead of COCO's 480-640 px images.

    Returns:
        ``(images folder, annotation file)``.
    """
    rng = np.random.default_rng(seed)
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    drawn: list[tuple[str, int, int, list[dict[str, Any]]]] = []
    for i in range(num_images):
        w, h = int(rng.integers(480, 641)), int(rng.integers(427, 641))
        zoom = 1.0
        if photos:
            w, h = (4032, 3024) if i % 4 else (3024, 4032)
            zoom = 4032 / 640
        pixels = _texture(rng, h, w, grain=16)  # ~140 KB files, COCO train2017's mean is ~160 KB
        n = instances if instances is not None else 1 + int(rng.poisson(COCO_MEAN_INSTANCES - 1))
        crowd = i % 10 == 5
        objects = []
        for k in range(n + crowd):
            polygons = _object_polygons(rng, h, w, zoom)
            rle = mask_utils.merge(mask_utils.frPyObjects(polygons, h, w))
            area = float(mask_utils.area(rle))
            if area < 1:
                continue
            mask = mask_utils.decode(rle).astype(bool)
            pixels[mask] = 0.5 * pixels[mask] + rng.uniform(0, 128, 3).astype(np.float32)
            is_crowd = k == n  # the last region of every tenth image: a crowd, stored as RLE
            segmentation: Any = polygons
            if is_crowd:
                segmentation = {"size": [h, w], "counts": rle["counts"].decode("ascii")}
            objects.append(
                {
                    "category_id": int(rng.integers(1, 81)),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "area": area,
                    "segmentation": segmentation,
                    "iscrowd": int(is_crowd),
                }
            )
        name = f"distinct_{i:06d}.jpg"
        _save_jpeg(pixels, images_dir / name)
        drawn.append((name, h, w, objects))
    images, annotations = [], []
    for image_id in range(1, listed + 1):
        source, h, w, objects = drawn[(image_id - 1) % num_images]
        name = f"{image_id:012d}.jpg"
        os.link(images_dir / source, images_dir / name)
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
        for obj in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **obj})
    categories = [{"id": c, "name": f"class{c}", "supercategory": "object"} for c in range(1, 81)]
    data = {"images": images, "annotations": annotations, "categories": categories}
    annotation_file = root / "instances.json"
    annotation_file.write_text(json.dumps(data, separators=(",", ":")))
    return images_dir, annotation_file


def _ade_label(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """``uint8`` ``(h, w)``: wobbly Voronoi regions with frequent classes large, plus small objects."""
    n = int(rng.integers(10, 25))
    # Class ranks drawn with a long tail (ADE20K: wall, building, sky, floor, tree dominate); 0 is "other".
    classes = np.minimum(rng.zipf(1.6, n), 150).astype(np.uint8)
    classes[rng.random(n) < 0.1] = 0
    seeds = rng.uniform(0, 1, (n, 2)) * (h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    wobble = cv2.resize(rng.normal(0, 25, (8, 10, 2)).astype(np.float32), (w, h), cv2.INTER_CUBIC)
    yy, xx = yy + wobble[..., 0], xx + wobble[..., 1]
    weight = rng.uniform(0.5, 1.5, n)  # unequal region sizes
    distance = np.stack([((yy - sy) ** 2 + (xx - sx) ** 2) * wt for (sy, sx), wt in zip(seeds, weight)])
    label = classes[distance.argmin(axis=0)]
    for _ in range(int(rng.integers(2, 8))):
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(5, 60)), int(rng.integers(5, 60)))
        cv2.ellipse(label, centre, axes, float(rng.uniform(0, 180)), 0, 360, int(rng.integers(1, 151)), -1)
    return label


def write_ade_like(root: Path, num_images: int, listed: int, seed: int) -> Path:
    """An ADEChallengeData2016 folder under ``root``: ``listed`` training pairs, 2 validation pairs.

    ``num_images`` distinct pairs are drawn (into ``root/distinct``) and the training split holds
    ``listed`` pairs of hard links to them, named as ADE20K's. Sizes: 512 x 683 (h x w) mostly, some
    683 x 512 and 512 x 768-1024; JPEG quality 90; mode ``L`` label PNGs with values 0..150 (0 = other).

    Returns:
        ``root``, the folder ``ADE20KDataModule(root=...)`` takes.
    """
    rng = np.random.default_rng(seed)
    distinct, base = root / "distinct", root / "ADEChallengeData2016"
    distinct.mkdir(parents=True, exist_ok=True)
    for i in range(num_images):
        r = rng.random()
        h, w = (512, 683) if r < 0.7 else (683, 512) if r < 0.85 else (512, int(rng.integers(768, 1025)))
        label = _ade_label(rng, h, w)
        palette = rng.uniform(40, 220, (256, 3)).astype(np.float32)
        pixels = 0.6 * _texture(rng, h, w, grain=4) + 0.4 * palette[label]
        _save_jpeg(pixels, distinct / f"{i:06d}.jpg")
        Image.fromarray(label).save(distinct / f"{i:06d}.png")
    for split, infix, count in (("training", "train", listed), ("validation", "val", 2)):
        (base / "images" / split).mkdir(parents=True, exist_ok=True)
        (base / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for j in range(count):
            name = f"ADE_{infix}_{j + 1:08d}"
            source = distinct / f"{j % num_images:06d}"
            os.link(source.with_suffix(".jpg"), base / "images" / split / f"{name}.jpg")
            os.link(source.with_suffix(".png"), base / "annotations" / split / f"{name}.png")
    return root


# ----------------------------------------------------------------------------------------------------
# Measurement
# ----------------------------------------------------------------------------------------------------


@dataclass
class Pipeline:
    """One training pipeline: its DataModule and what it has to sustain per worker (samples/s)."""

    name: str
    size: int
    per_worker_need: float
    datamodule: SplitDataModule
    extra: dict[str, Any]


def _batches(loader: DataLoader) -> Iterator[Any]:
    """Batches without end: a new epoch (new order and augmentations) whenever one finishes."""
    epoch = 0
    while True:
        loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def measure(pipeline: Pipeline, workers: int, warmup: int, seconds: float, repeats: int) -> dict[str, Any]:
    """Samples/s of the pipeline's training DataLoader with ``workers`` processes (0: this process).

    After ``warmup`` batches (workers started, their first batches consumed), each repeat takes whole
    batches until ``seconds`` have passed.
    """
    pipeline.datamodule.num_workers = workers
    loader = pipeline.datamodule.train_dataloader()
    stream = _batches(loader)
    for _ in range(warmup):
        next(stream)
    rates, samples = [], 0
    for _ in range(repeats):
        samples, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            samples += len(next(stream)[0])
        rates.append(samples / elapsed)
    del stream, loader  # stops persistent workers
    return {"samples_per_s": statistics.mean(rates), "repeats": rates, "samples_per_repeat": samples}


# ----------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------

ROWS = [
    "mask_rcnn_coco",
    "faster_rcnn_coco",
    "mask_rcnn_coco20",
    "faster_rcnn_coco20",
    "mask_rcnn_photo20",
    "faster_rcnn_photo20",
    "semseg_ade",
]


def build_pipelines(root: Path, tiny: bool, rows: list[str]) -> list[Pipeline]:
    """Write the data sets of ``rows`` and their DataModules, configured as the recipes."""
    distinct, listed = (16, 256) if tiny else (128, 2048)
    det_batch, seg_batch = (4, 8) if tiny else (8, 16)
    pipelines = []
    for tag, instances in (("coco", None), ("coco20", 20), ("photo20", 20)):
        variants = [m for m in ("mask_rcnn", "faster_rcnn") if f"{m}_{tag}" in rows]
        if not variants:
            continue
        photos = tag == "photo20"
        # 12-megapixel images take ~1 s each to draw: fewer distinct ones (the epoch lists them many times).
        drawn = max(4, distinct // 16) if photos else distinct
        images, annotations = write_coco_like(
            root / tag, drawn, listed, instances, seed=instances or 0, photos=photos
        )
        coco = json.loads(annotations.read_text())
        plain = sum(1 for a in coco["annotations"] if not a["iscrowd"])
        extra = {
            "images": drawn,
            "instances_per_image": round(plain / len(coco["images"]), 2),
            "batch": det_batch,
        }
        for model in variants:
            masks = model == "mask_rcnn"
            datamodule = CocoDataModule(
                train_images=str(images),
                train_annotations=str(annotations),
                val_images=str(images),
                val_annotations=str(annotations),
                image_size=1008,
                batch_size=det_batch,
                masks=masks,
                min_scale=0.1,
                max_scale=2.0,
                on_bad_data="error",
            )
            datamodule.setup("fit")
            need = 2 * (24 if masks else 26) / 16
            pipelines.append(Pipeline(f"{model}_{tag}", 1008, need, datamodule, {**extra, "masks": masks}))
    if "semseg_ade" in rows:
        datamodule = ADE20KDataModule(
            root=str(write_ade_like(root / "ade", distinct * 2, listed, seed=1)),
            crop_size=518,
            scale=(2048, 512),
            ratio_range=(0.5, 2.0),
            cat_max_ratio=0.75,
            batch_size=seg_batch,
        )
        datamodule.setup("fit")
        extra = {"images": distinct * 2, "batch": seg_batch}
        pipelines.append(Pipeline("semseg_ade", 518, 2 * 120 / 16, datamodule, extra))
    return pipelines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="few images, short timings: checks the script")
    parser.add_argument("--rows", nargs="+", default=ROWS, choices=ROWS)
    parser.add_argument("--repeats", type=int, default=None, help="timed windows per row (3; --tiny 2)")
    parser.add_argument("--seconds", type=float, default=None, help="length of a repeat (5; --tiny 1)")
    parser.add_argument("--workers", type=int, default=2, help="processes of the multi-worker run (0: skip)")
    args = parser.parse_args()

    torch.set_num_threads(1)  # DataLoader workers run torch on one thread too
    cv2.setNumThreads(0)  # sequential: the kit's transforms set this at import, restated here
    seconds = args.seconds or (1.0 if args.tiny else 5.0)
    repeats = args.repeats or (2 if args.tiny else 3)
    with tempfile.TemporaryDirectory(prefix="vitdense_dataloader_") as tmp:
        start = time.perf_counter()
        pipelines = build_pipelines(Path(tmp), args.tiny, args.rows)
        print(f"# data written in {time.perf_counter() - start:.1f} s", flush=True)
        for pipeline in pipelines:
            for workers in (0, args.workers) if args.workers > 0 else (0,):
                # The workers' first batches come all at once; 2 per worker are consumed before timing.
                result = measure(pipeline, workers, max(2, 2 * workers), seconds, repeats)
                processes = max(1, workers)
                per_worker = result["samples_per_s"] / processes
                row = {
                    "name": pipeline.name,
                    "size": pipeline.size,
                    "samples_per_s": round(result["samples_per_s"], 2),
                    "samples_per_s_per_worker": round(per_worker, 2),
                    "spread": [round(min(result["repeats"]), 2), round(max(result["repeats"]), 2)],
                    "per_worker_need": round(pipeline.per_worker_need, 3),
                    "meets_need": per_worker >= pipeline.per_worker_need,
                    "estimate_16_workers": round(16 * per_worker, 1),  # linear in workers, one core each
                    "twice_target_rate": round(16 * pipeline.per_worker_need, 1),
                    "workers": processes,
                    "in_process": workers == 0,
                    "samples_per_repeat": result["samples_per_repeat"],
                    "repeats": len(result["repeats"]),
                    "device": "cpu",
                    **pipeline.extra,
                }
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
