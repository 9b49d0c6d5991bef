"""Private memory of DataLoader workers over one pass of a large COCO-format training file (Linux).

A forked worker shares its parent's pages until it writes one; reading Python objects writes their reference
counts, so records kept as Python lists end up copied into every worker. This writes a synthetic file of
``--images`` images (7 polygon instances each, tiny image files so that loading is cheap), builds the kit's
``CocoDetection`` with masks, iterates it once with ``--workers`` workers and prints each worker's private
memory (USS: private clean + dirty pages, from /proc/<pid>/smaps_rollup) at the start and at the end, as
one JSON line.

    python benchmarks/worker_memory.py --images 20000 --workers 2
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import DataLoader

from vitdense.datamodules import CocoDetection, EvalTransform, collate_detection


def private_mb(pid: int) -> int:
    """Private (unshared) resident memory of process ``pid`` in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0])
    return (fields["Private_Clean"] + fields["Private_Dirty"]) // 1024


def write_coco(folder: Path, images: int, instances: int = 7) -> Path:
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(folder / "a.jpg")
    rng = np.random.default_rng(0)
    records, annotations = [], []
    for image_id in range(images):
        records.append({"id": image_id, "file_name": "a.jpg", "height": 64, "width": 64})
        for _ in range(instances):
            polygon = (rng.random(40) * 30 + 10).round(2).tolist()  # 20 points
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "bbox": [10, 10, 30, 30],
                    "area": 900.0,
                    "iscrowd": 0,
                    "segmentation": [polygon],
                }
            )
    path = folder / "train.json"
    path.write_text(json.dumps({"images": records, "annotations": annotations, "categories": [{"id": 1}]}))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        annotations = write_coco(Path(tmp), args.images)
        start = time.perf_counter()
        dataset = CocoDetection(tmp, annotations, EvalTransform(112), masks=True)
        built_s = time.perf_counter() - start
        loader = DataLoader(
            dataset,
            batch_size=32,
            num_workers=args.workers,
            collate_fn=collate_detection,
            persistent_workers=True,
        )
        batches = iter(loader)
        next(batches)
        workers = [w.pid for w in batches._workers]
        at_start = [private_mb(pid) for pid in workers]
        for _ in batches:
            pass
        at_end = [private_mb(pid) for pid in workers]
    row = {
        "name": "coco_worker_private_memory",
        "images": args.images,
        "instances": 7 * args.images,
        "workers": args.workers,
        "dataset_build_s": round(built_s, 2),
        "worker_private_mb_start": at_start,
        "worker_private_mb_end": at_end,
    }
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
