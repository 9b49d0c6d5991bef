"""Training and inference throughput of vitdense's Faster / Mask R-CNN on one synthetic batch.

Each measurement prints one JSON line: name, size, batch, img/s, peak GiB, device. On a GPU the steps run
under bf16 autocast, as the recipes do; on the CPU in fp32.

    python benchmarks/detection_throughput.py --tiny                      # CPU check, tiny backbone
    python benchmarks/detection_throughput.py --size 1008 --batch 8       # full backbone on a GPU
"""

import argparse
import contextlib
import json
import time

import torch

from vitdense.backbones import BirderBackbone, SimpleFeaturePyramid
from vitdense.heads import FasterRCNN, MaskRCNN, paste_detections

TINY = {"hidden_dim": 64, "num_layers": 2, "num_heads": 4, "mlp_dim": 128, "drop_path_rate": 0.0}


def synthetic_batch(batch: int, size: int, boxes: int, device: torch.device, seed: int = 0) -> tuple:
    """uint8 canvases and targets with ``boxes`` rectangles (and their masks) of 16 to size/2 pixels."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator)
    targets = []
    for _ in range(batch):
        wh = torch.randint(16, size // 2, (boxes, 2), generator=generator).float()
        xy = torch.rand(boxes, 2, generator=generator) * (size - wh)
        xyxy = torch.cat([xy, xy + wh], dim=1).floor()
        masks = torch.zeros(boxes, size, size, dtype=torch.uint8)
        for index, (x1, y1, x2, y2) in enumerate(xyxy.int().tolist()):
            masks[index, y1:y2, x1:x2] = 1
        targets.append(
            {
                "boxes": xyxy.to(device),
                "labels": torch.randint(1, 81, (boxes,), generator=generator).to(device),
                "masks": masks.to(device),
            }
        )
    return images.to(device), targets


def build(arch: str, tiny: bool, grad_checkpointing: bool) -> torch.nn.Module:
    vit = BirderBackbone(config=TINY if tiny else None, grad_checkpointing=grad_checkpointing)
    backbone = SimpleFeaturePyramid(vit, out_channels=256)
    return (MaskRCNN if arch == "mask_rcnn" else FasterRCNN)(80, backbone)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(fn, steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per call after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="tiny backbone, small canvas (CPU check)")
    parser.add_argument("--size", type=int, default=None, help="canvas side, a multiple of 56 (default 1008)")
    parser.add_argument("--batch", type=int, default=None, help="images per step (default 8)")
    parser.add_argument("--boxes", type=int, default=20, help="ground-truth boxes and masks per image")
    parser.add_argument("--steps", type=int, default=None, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--arch", choices=["faster_rcnn", "mask_rcnn", "both"], default="both")
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument(
        "--original-size",
        type=int,
        nargs=2,
        default=(1000, 1333),
        metavar=("H", "W"),
        help="image size masks are pasted back to at inference",
    )
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size = args.size or (224 if args.tiny else 1008)
    batch = args.batch or (2 if args.tiny else 8)
    steps = args.steps or (3 if args.tiny else 10)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    )
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    images, targets = synthetic_batch(batch, size, args.boxes, device)
    image_sizes = [(size, size)] * batch
    scale = size / max(args.original_size)
    common = {
        "size": size,
        "batch": batch,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
    }

    archs = ["faster_rcnn", "mask_rcnn"] if args.arch == "both" else [args.arch]
    for arch in archs:
        model = build(arch, args.tiny, args.grad_checkpointing).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        arch_targets = (
            targets if arch == "mask_rcnn" else [{k: t[k] for k in ("boxes", "labels")} for t in targets]
        )

        def train_step() -> None:
            with autocast:
                losses = model(images, image_sizes, arch_targets)
            sum(losses.values()).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        def inference_step() -> None:
            with torch.inference_mode(), autocast:
                detections = model(images, image_sizes)
            paste_detections(detections, [scale] * batch, [tuple(args.original_size)] * batch)

        def report(name: str, step) -> None:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            seconds = measure(step, steps, args.warmup, device)
            peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
            print(
                json.dumps({"name": name, **common, "img_s": batch / seconds, "peak_gib": peak}), flush=True
            )

        model.train()
        report(f"vitdense_{arch}_train", train_step)
        model.eval()
        report(f"vitdense_{arch}_inference", inference_step)
        model = optimizer = None  # free this architecture's memory before the next one
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
