"""Time and memory of setting up training on a COCO train2017-sized annotation file.

``CocoDataModule(...)`` (which parses the training file) then ``.setup("fit")`` (the training dataset with
masks, and the validation dataset), on ``coco_synthetic.py``'s ``train`` file (118,287 images, ~860k
polygon annotations, ~525 MB) and its ``val`` file (5,000 images); both are written under ``--data`` first
when missing, by a separate process. Only public APIs are called, so the numbers follow whatever the
datamodule does. The measuring process is this one, fresh: its resident memory after the imports, after
``setup`` and a ``gc.collect()``, and its peak. One JSON line. ``total_cpu_s``: the CPU time of ``init`` and
``setup`` together, which a machine shared with other work stretches less than their wall time.

    python benchmarks/coco_setup.py                  # ~2 min, plus ~10 min to write the files once
    python benchmarks/coco_setup.py --tiny           # 20 images, seconds
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from coco_synthetic import DEFAULT_OUT, TINY_IMAGES, write_train, write_val  # noqa: E402
from process_memory import peak_rss_gb, rss_gb  # noqa: E402


def measure(data: Path) -> dict:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from vitdense.datamodules import CocoDataModule

    gc.collect()
    after_imports = rss_gb()
    annotations = data / "annotations"
    start, start_cpu = time.perf_counter(), time.process_time()
    datamodule = CocoDataModule(
        train_images=str(data / "images"),
        train_annotations=str(annotations / "instances_train.json"),
        val_images=str(data / "images"),
        val_annotations=str(annotations / "instances_val.json"),
        num_workers=0,
    )
    init_s = time.perf_counter() - start
    start = time.perf_counter()
    datamodule.setup("fit")
    setup_s = time.perf_counter() - start
    cpu_s = time.process_time() - start_cpu
    gc.collect()
    return {
        "train_json_mb": (annotations / "instances_train.json").stat().st_size / 1e6,
        "train_images": len(datamodule.train_dataset),
        "val_images": len(datamodule.val_dataset),
        "init_s": init_s,
        "setup_s": setup_s,
        "total_s": init_s + setup_s,
        "total_cpu_s": cpu_s,
        "rss_after_imports_gb": after_imports,
        "rss_after_setup_gb": rss_gb(),
        "peak_rss_gb": peak_rss_gb(),
    }


def main(argv: list[str] | None = None) -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_OUT, help="coco_synthetic.py's --out")
    parser.add_argument("--tiny", action="store_true", help=f"{TINY_IMAGES} training images")
    args = parser.parse_args(argv)
    annotations = args.data / "annotations"
    for split, write in (("train", write_train), ("val", write_val)):
        if (annotations / f"instances_{split}.json").exists():
            continue
        if args.tiny:
            write(args.data, TINY_IMAGES)
        else:  # in another process: what writing allocates stays out of this one's peak
            generator = [sys.executable, str(Path(__file__).with_name("coco_synthetic.py")), split]
            subprocess.run([*generator, "--out", str(args.data)], check=True)
    print(json.dumps(measure(args.data)))


if __name__ == "__main__":
    main()
