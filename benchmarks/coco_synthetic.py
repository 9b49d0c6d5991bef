"""COCO-scale synthetic annotation and detection files, for the evaluation and data-setup benchmarks.

Nothing here is COCO's data; the files have its shape and its sizes, which is what evaluation and setup cost
depends on:

- ``val``: 5,000 images of 640 px on the long side (COCO's mix of 480 / 427 / other short sides), 7.3
  annotations per image on average (~36.5k; 1 % of the images without any, 0.8 % crowd regions stored as
  uncompressed RLE, as COCO stores them), COCO's 80 category ids with a person-heavy mix, COCO's
  small / medium / large split (41 / 34 / 25 %), polygons (10 % of the objects in two parts) whose vertex
  count grows with the object; and 100 detections per image (500k), as a trained Mask R-CNN leaves them:
  one or two near most objects (their outline, moved and noisy, as the mask), the rest low-scored
  elsewhere (a polygon inside the box).
  Written as the two results files the kit writes (``bbox_results.json``, ``segm_results.json``) plus the
  detections' canvas boxes (``detections.npz``: float32 ``x1, y1, x2, y2``, what ``CocoEvaluator.update``
  receives; the files' ``w, h`` are their float32 differences, as the evaluator computes them).
- ``train``: 118,287 images and ~860k annotations (COCO train2017's counts), the same generator, polygon
  coordinates with two decimals: ~525 MB of JSON. Written as it is generated, never held whole in memory.

Layout under ``--out`` (default ``/tmp/vitdense-coco``; never inside the repository)::

    annotations/instances_val.json   annotations/instances_train.json
    results/bbox_results.json        results/segm_results.json        results/detections.npz
    images/<file_name>               (hard links to one small JPEG: setup checks that the files exist)

    python benchmarks/coco_synthetic.py val      # ~1.5 min on 2 cores
    python benchmarks/coco_synthetic.py train    # ~4 min
    python benchmarks/coco_synthetic.py val --tiny --out /tmp/tiny   # 20 images, seconds
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

DEFAULT_OUT = Path("/tmp/vitdense-coco")
COCO_CATEGORY_IDS = [i for i in range(1, 91) if i not in {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}]
VAL_IMAGES, TRAIN_IMAGES = 5000, 118287
ANNOTATIONS_PER_IMAGE = 7.3
DETECTIONS_PER_IMAGE = 100
TINY_IMAGES = 20


def _category_weights() -> np.ndarray:
    """Person 30 % of the objects (as in COCO), the other 79 categories a long tail."""
    tail = 1.0 / np.arange(1, len(COCO_CATEGORY_IDS)) ** 0.8
    return np.concatenate([[0.3], 0.7 * tail / tail.sum()])


CATEGORY_WEIGHTS = _category_weights()


def image_size(rng: np.random.Generator) -> tuple[int, int]:
    """``(height, width)``: 640 on the long side, landscape 70 % of the time."""
    short = int(rng.choice([480, 427, int(rng.integers(240, 641))], p=[0.45, 0.3, 0.25]))
    return (short, 640) if rng.random() < 0.7 else (640, short)


def object_boxes(rng: np.random.Generator, count: int, height: int, width: int) -> np.ndarray:
    """``(count, 4)`` float64 ``x, y, w, h`` inside the image with COCO's small / medium / large mix."""
    size_class = rng.choice(3, count, p=[0.41, 0.34, 0.25])
    # An object's mask covers about half its box: sides 1.4x the area range's.
    low = np.array([5.6, 45.0, 134.0])[size_class]
    high = np.array([45.0, 134.0, 0.9 * min(height, width)])[size_class]
    side = np.exp(rng.uniform(np.log(low), np.log(np.maximum(high, low + 1))))
    aspect = np.exp(rng.normal(0.0, 0.5, count))
    w = np.clip(side * np.sqrt(aspect), 2.0, width - 1.0)
    h = np.clip(side / np.sqrt(aspect), 2.0, height - 1.0)
    x = rng.uniform(0, width - w)
    y = rng.uniform(0, height - h)
    return np.stack([x, y, w, h], 1)


def polygon_in_box(rng: np.random.Generator, box: np.ndarray, vertices: int) -> np.ndarray:
    """A star-shaped polygon inside ``box`` (x, y, w, h): flat ``x0, y0, x1, y1, ...`` float64."""
    x, y, w, h = box
    angles = np.sort(rng.uniform(0, 2 * np.pi, vertices))
    radii = rng.uniform(0.55, 1.0, vertices)
    xs = x + w / 2 * (1 + radii * np.cos(angles))
    ys = y + h / 2 * (1 + radii * np.sin(angles))
    return np.stack([xs, ys], 1).ravel()


def vertex_count(rng: np.random.Generator, box: np.ndarray) -> int:
    """Vertices of an annotator's polygon: more for larger outlines (COCO's mean is ~30 per part)."""
    perimeter = 2 * (box[2] + box[3])
    return int(np.clip(round(6 + perimeter / 15 * rng.uniform(0.5, 1.5)), 4, 400))


def shoelace_area(polygon: np.ndarray) -> float:
    """Area enclosed by a flat ``x0, y0, x1, y1, ...`` polygon."""
    xs, ys = polygon[0::2], polygon[1::2]
    return float(abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))) / 2)


def uncompressed_rle(mask: np.ndarray) -> list[int]:
    """Column-major run lengths of a (h, w) 0/1 mask, background first: COCO's crowd ``counts``."""
    flat = mask.ravel(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    return runs if flat[0] == 0 else [0, *runs]


def image_annotations(
    rng: np.random.Generator, image_id: int, height: int, width: int, first_id: int, mask_area: bool
) -> list[dict]:
    """One image's ground truth: polygons (some in two parts) and, rarely, a crowd region.

    ``area`` is the rasterised polygon's pixel count with ``mask_area`` (COCO's definition, what the
    evaluation uses), else the polygon's shoelace area (close to it; cheap enough for 860k polygons).
    """
    more = int(rng.negative_binomial(2, 2 / (2 + ANNOTATIONS_PER_IMAGE - 1)))  # mean 6.3
    count = 0 if rng.random() < 0.01 else min(1 + more, 80)
    annotations = []
    boxes = object_boxes(rng, count, height, width)
    categories = rng.choice(COCO_CATEGORY_IDS, count, p=CATEGORY_WEIGHTS)
    for index in range(count):
        box, category = boxes[index], int(categories[index])
        ann_id = first_id + index
        if rng.random() < 0.008 and box[2] * box[3] > 32 * 32:  # a crowd region, uncompressed RLE
            yy, xx = np.mgrid[:height, :width]
            cx, cy, rx, ry = box[0] + box[2] / 2, box[1] + box[3] / 2, box[2] / 2, box[3] / 2
            mask = (((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2 <= 1).astype(np.uint8)
            rle = mask_utils.encode(np.asfortranarray(mask))
            annotations.append(
                {
                    "segmentation": {"counts": uncompressed_rle(mask), "size": [height, width]},
                    "area": int(mask_utils.area(rle)),
                    "iscrowd": 1,
                    "image_id": image_id,
                    "bbox": [round(float(v), 2) for v in mask_utils.toBbox(rle)],
                    "category_id": category,
                    "id": ann_id,
                }
            )
            continue
        parts = [polygon_in_box(rng, box, vertex_count(rng, box))]
        if rng.random() < 0.1:  # a second, smaller part beside the first (an occluded object)
            part_box = box * np.array([1, 1, 0.4, 0.4]) + np.array([box[2] * 0.6, box[3] * 0.6, 0, 0])
            parts.append(polygon_in_box(rng, part_box, vertex_count(rng, part_box)))
        parts = [np.clip(part, 0, [width, height] * (len(part) // 2)).round(2) for part in parts]
        points = np.concatenate(parts).reshape(-1, 2)
        x0, y0 = points.min(0)
        x1, y1 = points.max(0)
        if mask_area:
            rles = mask_utils.frPyObjects([part.tolist() for part in parts], height, width)
            area = float(mask_utils.area(mask_utils.merge(rles)))
        else:
            area = float(sum(shoelace_area(part) for part in parts))
        annotations.append(
            {
                "segmentation": [part.tolist() for part in parts],
                "area": round(area, 4),
                "iscrowd": 0,
                "image_id": image_id,
                "bbox": [round(float(v), 2) for v in (x0, y0, x1 - x0, y1 - y0)],
                "category_id": category,
                "id": ann_id,
            }
        )
    return annotations


def image_record(image_id: int, height: int, width: int, split: str) -> dict:
    name = f"{image_id:012d}.jpg"
    return {
        "license": 1,
        "file_name": name,
        "coco_url": f"http://images.example.invalid/{split}2017/{name}",
        "height": height,
        "width": width,
        "date_captured": "2013-11-14 11:18:45",
        "flickr_url": f"http://photos.example.invalid/{image_id}_z.jpg",
        "id": image_id,
    }


def image_detections(
    rng: np.random.Generator, annotations: list[dict], height: int, width: int, count: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
    """``count`` detections of one image: float32 ``(count, 4)`` x1 y1 x2 y2, float32 scores, category ids
    and compressed RLE masks. Near an object: its box moved and resized a little, its outline likewise with
    noise on every vertex; elsewhere: a random box and a polygon inside it."""
    boxes, scores, categories, outlines = [], [], [], []
    for ann in annotations:
        if ann["iscrowd"] or rng.random() > 0.9:  # crowd regions are not detected; 10 % of objects missed
            continue
        x, y, w, h = ann["bbox"]
        outline = np.asarray(ann["segmentation"][0]).reshape(-1, 2)
        for _ in range(1 + int(rng.poisson(0.8))):
            scale = np.exp(rng.normal(0, 0.12, 2))
            shift = rng.normal(0, 0.08, 2) * (w, h)
            center = np.array([x + w / 2, y + h / 2])
            boxes.append([*(center + shift - (w, h) * scale / 2), *((w, h) * scale)])
            noise = rng.normal(0, 0.03, outline.shape) * (w, h)
            outlines.append(((outline - center) * scale + center + shift + noise).ravel())
            same = rng.random() < 0.85
            categories.append(ann["category_id"] if same else int(rng.choice(COCO_CATEGORY_IDS)))
            scores.append(rng.beta(4, 1.5))
    background = object_boxes(rng, max(count - len(boxes), 0), height, width)
    outlines += [polygon_in_box(rng, box, int(rng.integers(12, 33))) for box in background]
    boxes = np.concatenate([np.array(boxes).reshape(-1, 4), background])
    others = rng.choice(COCO_CATEGORY_IDS, len(background), p=CATEGORY_WEIGHTS)
    categories = np.concatenate([categories, others])
    scores = np.concatenate([scores, 0.05 + 0.6 * rng.beta(1, 6, len(background))])
    keep = np.argsort(-scores, kind="stable")[:count]
    xyxy = np.concatenate([boxes[keep, :2], boxes[keep, :2] + boxes[keep, 2:]], 1)
    xyxy = np.clip(xyxy, 0, [width, height, width, height])
    xyxy[:, 2:] = np.maximum(xyxy[:, 2:], xyxy[:, :2] + 1)
    polygons = [np.clip(outlines[i], 0, [width, height] * (len(outlines[i]) // 2)).tolist() for i in keep]
    masks = mask_utils.frPyObjects(polygons, height, width) if polygons else []
    return xyxy.astype(np.float32), scores[keep].astype(np.float32), categories[keep].astype(np.int64), masks


def _categories() -> list[dict]:
    return [{"supercategory": "thing", "id": i, "name": f"category{i}"} for i in COCO_CATEGORY_IDS]


def _dump(records: list[dict]) -> str:
    """A JSON list, one record per line (the kit's results files' layout)."""
    return "[\n" + ",\n".join(json.dumps(record) for record in records) + "\n]\n"


def link_images(out: Path, file_names: list[str]) -> None:
    """``images/<file_name>`` for every image: hard links to small gray JPEGs (setting up a dataset checks
    that each file exists; nothing in the benchmarks reads them)."""
    folder = out / "images"
    folder.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(file_names), 60_000):  # ext4 allows 65,000 links to one file
        source = folder / f"_synthetic{start // 60_000}.jpg"
        if not source.exists():
            Image.new("RGB", (64, 48), (128, 128, 128)).save(source, quality=90)
        for name in file_names[start : start + 60_000]:
            if not (folder / name).exists():
                os.link(source, folder / name)


def write_val(
    out: Path, images: int = VAL_IMAGES, detections: int = DETECTIONS_PER_IMAGE, seed: int = 0
) -> None:
    """Ground truth, results files and ``detections.npz`` of a val-like split (see the module docstring)."""
    rng = np.random.default_rng(seed)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    (out / "results").mkdir(parents=True, exist_ok=True)
    image_ids = np.sort(rng.choice(600_000, images, replace=False) + 1).tolist()
    records, annotations = [], []
    bbox_results, segm_results = [], []
    arrays: dict[str, list[np.ndarray]] = {"image_id": [], "boxes_xyxy": [], "score": [], "category_id": []}
    for image_id in image_ids:
        height, width = image_size(rng)
        records.append(image_record(image_id, height, width, "val"))
        image_anns = image_annotations(rng, image_id, height, width, len(annotations) + 1, mask_area=True)
        annotations.extend(image_anns)
        xyxy, scores, categories, masks = image_detections(rng, image_anns, height, width, detections)
        xywh = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], 1)  # float32, as the evaluator
        for box, score, category, mask in zip(xywh.tolist(), scores.tolist(), categories.tolist(), masks):
            common = {"image_id": image_id, "category_id": category}
            bbox_results.append({**common, "bbox": box, "score": score})
            segmentation = {"size": [height, width], "counts": mask["counts"].decode("ascii")}
            segm_results.append({**common, "segmentation": segmentation, "score": score})
        arrays["image_id"].append(np.full(len(scores), image_id, np.int64))
        arrays["boxes_xyxy"].append(xyxy)
        arrays["score"].append(scores)
        arrays["category_id"].append(categories)
    dataset = {"info": {"description": "synthetic"}, "images": records, "annotations": annotations}
    dataset["categories"] = _categories()
    (out / "annotations" / "instances_val.json").write_text(json.dumps(dataset, separators=(",", ":")))
    (out / "results" / "bbox_results.json").write_text(_dump(bbox_results))
    (out / "results" / "segm_results.json").write_text(_dump(segm_results))
    joined = {key: np.concatenate(parts) for key, parts in arrays.items()}
    np.savez(out / "results" / "detections.npz", **joined)
    link_images(out, [record["file_name"] for record in records])


def write_train(out: Path, images: int = TRAIN_IMAGES, seed: int = 1) -> None:
    """A train2017-sized annotation file, streamed to disk (see the module docstring)."""
    rng = np.random.default_rng(seed)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    image_ids = np.sort(rng.choice(600_000, images, replace=False) + 1).tolist()
    sizes = [image_size(rng) for _ in image_ids]
    path = out / "annotations" / "instances_train.json"
    temporary = path.with_suffix(".json.tmp")
    with temporary.open("w") as f:
        f.write('{"info":{"description":"synthetic"},"images":[')
        records = (image_record(i, h, w, "train") for i, (h, w) in zip(image_ids, sizes))
        f.write(",".join(json.dumps(record, separators=(",", ":")) for record in records))
        f.write('],"annotations":[')
        next_id, first = 1, True
        for image_id, (height, width) in zip(image_ids, sizes):
            anns = image_annotations(rng, image_id, height, width, next_id, mask_area=False)
            next_id += len(anns)
            if anns:
                f.write(("" if first else ",") + ",".join(json.dumps(a, separators=(",", ":")) for a in anns))
                first = False
        f.write('],"categories":' + json.dumps(_categories(), separators=(",", ":")) + "}")
    temporary.replace(path)
    link_images(out, [image_record(i, 0, 0, "train")["file_name"] for i in image_ids])


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("split", choices=["val", "train"])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--tiny", action="store_true", help=f"{TINY_IMAGES} images, 10 detections each")
    args = parser.parse_args()
    if args.split == "val":
        detections = 10 if args.tiny else DETECTIONS_PER_IMAGE
        write_val(args.out, TINY_IMAGES if args.tiny else VAL_IMAGES, detections)
    else:
        write_train(args.out, TINY_IMAGES if args.tiny else TRAIN_IMAGES)
    print(json.dumps({"split": args.split, "out": str(args.out)}))


if __name__ == "__main__":
    main()
