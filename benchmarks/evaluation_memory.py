"""Peak memory and time of a Mask R-CNN COCO evaluation on 12-megapixel photos (``trainer.validate``).

Detections are pasted at each image's original resolution for COCOeval: 100 masks on a 4032 x 3024 photo
are 1.2 GB of bool, per image. The data are 12 MP JPEGs with 20 polygon instances each (written by
``dataloader_cpu.write_coco_like``); the model is a random tiny Mask R-CNN made to keep 100 detections per
image (``throughput.busy_box_predictor``), so that every image pastes and encodes 100 masks. The validation
runs in a fresh process, whose peak memory is reported: the process's peak resident set on the CPU, peak
allocated CUDA memory on a GPU. One JSON line.

    python benchmarks/evaluation_memory.py            # 8 photos, eval batch 4 (~1 minute on 2 cores)
    python benchmarks/evaluation_memory.py --tiny     # 2 photos, eval batch 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402
from lightning import Trainer  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from dataloader_cpu import write_coco_like  # noqa: E402
from throughput import busy_box_predictor  # noqa: E402

from vitdense.backbones import BirderBackbone, SimpleFeaturePyramid  # noqa: E402
from vitdense.datamodules import CocoDataModule  # noqa: E402
from vitdense.heads import MaskRCNN  # noqa: E402
from vitdense.tasks import DetectionTask  # noqa: E402

TINY_VIT = {"hidden_dim": 64, "num_layers": 2, "num_heads": 2, "mlp_dim": 128, "drop_path_rate": 0.0}
CANVAS = 448  # the model's input; the masks are pasted at the photos' own 4032 x 3024


def validate(root: Path, batch: int) -> dict:
    """Runs one validation over the photos in ``root`` in this process; its time and peak memory."""
    torch.manual_seed(0)
    images, annotations = str(root / "images"), str(root / "instances.json")
    datamodule = CocoDataModule(
        train_images=images,
        train_annotations=annotations,
        val_images=images,
        val_annotations=annotations,
        image_size=CANVAS,
        batch_size=batch,
        num_workers=0,
    )

    def detector(num_classes: int) -> MaskRCNN:
        vit = BirderBackbone(config=TINY_VIT, pretrained=None)
        return MaskRCNN(num_classes, SimpleFeaturePyramid(vit, out_channels=32), head_dim=32, fc_dim=64)

    task = DetectionTask(datamodule.num_classes, detector)
    busy_box_predictor(task.model)
    trainer = Trainer(
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=str(root),  # the evaluation reports
    )
    cuda = trainer.strategy.root_device.type == "cuda"
    start = time.perf_counter()
    trainer.validate(task, datamodule=datamodule, verbose=False)
    seconds = time.perf_counter() - start
    peak = (
        torch.cuda.max_memory_allocated() / 2**30
        if cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    )
    return {
        "name": "mask_rcnn_evaluation_12mp",
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "images": len(datamodule.val_dataset),
        "eval_batch": batch,
        "detections_per_image": 100,
        "seconds_per_image": round(seconds / len(datamodule.val_dataset), 3),
        "peak_gib": round(peak, 2),
        "peak_is": "cuda max_memory_allocated" if cuda else "process peak RSS",
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="2 photos, eval batch 2")
    parser.add_argument("--batch", type=int, default=None, help="evaluation batch (4; --tiny 2)")
    parser.add_argument("--validate", type=Path, default=None, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    batch = args.batch or (2 if args.tiny else 4)
    if args.validate is not None:
        print(json.dumps(validate(args.validate, batch)), flush=True)
        return
    photos = 2 if args.tiny else 8
    with tempfile.TemporaryDirectory(prefix="vitdense_evaluation_memory_") as tmp:
        write_coco_like(Path(tmp), photos, photos, 20, seed=0, photos=True)
        command = [sys.executable, __file__, "--validate", tmp, "--batch", str(batch)]
        result = subprocess.run(command, capture_output=True, text=True)
        rows = [line for line in result.stdout.splitlines() if line.startswith("{")]
        if result.returncode or not rows:
            raise SystemExit(f"the validation process failed:\n{result.stderr[-3000:]}")
        print(rows[-1], flush=True)


if __name__ == "__main__":
    main()
