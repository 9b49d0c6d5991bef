"""Instance masks of one 12-megapixel photo: decoding (``decode_masks``) and LSJ (``TrainTransform``) alone.

Circular polygons (24 points, radii 2-10 % of the short side) on a 3024 x 4032 image, mapped to a 1008
canvas. Prints one JSON line per instance count: mean milliseconds of each step over ``--repeats`` calls,
the bytes the decoded masks hold, and the process's peak resident set. Works with ``decode_masks`` returning
dense ``(N, H, W)`` masks too (the code before ``InstanceMasks``), for before/after comparisons.

    python benchmarks/mask_decoding.py                 # 20 and 100 instances, ~15 s
    python benchmarks/mask_decoding.py --tiny          # 20 instances on a 480 x 640 image
"""

import argparse
import json
import os
import resource
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402

from vitdense.datamodules.coco_checks import _Instance  # noqa: E402
from vitdense.datamodules.coco_dataset import decode_masks  # noqa: E402
from vitdense.datamodules.transforms import TrainTransform  # noqa: E402


def circles(n: int, h: int, w: int, seed: int = 0) -> list[_Instance]:
    rng = np.random.default_rng(seed)
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    instances = []
    for i in range(n):
        cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
        r = rng.uniform(0.02, 0.1) * min(h, w)
        polygon = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], 1).ravel().tolist()
        instances.append(_Instance(i, (cx - r, cy - r, cx + r, cy + r), 1, [polygon]))
    return instances


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="20 instances on a 480 x 640 image")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    h, w = (480, 640) if args.tiny else (3024, 4032)
    image = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    transform = TrainTransform(1008)
    for n in (20,) if args.tiny else (20, 100):
        instances = circles(n, h, w)
        boxes = np.asarray([inst.box for inst in instances], np.float32)
        start = time.perf_counter()
        for _ in range(args.repeats):
            masks = decode_masks(instances, h, w)
        decoded = time.perf_counter()
        for _ in range(args.repeats):
            transform(image, boxes, np.ones(n, np.int64), masks)
        done = time.perf_counter()
        held = sum(c.nbytes for c in masks.crops) if hasattr(masks, "crops") else masks.nbytes
        row = {
            "name": "mask_decoding",
            "image_size": [h, w],
            "instances": n,
            "decode_ms": round((decoded - start) / args.repeats * 1e3, 1),
            "train_transform_ms": round((done - decoded) / args.repeats * 1e3, 1),
            "masks_mib": round(held / 2**20, 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
