"""Training and inference throughput of vitdense's models and of a peer, on one synthetic batch each.

Rows: vitdense Faster R-CNN and Mask R-CNN (train step, inference with mask pasting at original size),
torchvision's maskrcnn_resnet50_fpn_v2 on the same batch, and vitdense's semantic segmenter (pyramid +
Semantic FPN + aux head) at a crop. Each prints one JSON line: name, size, batch, img/s, peak GiB, device. On a
GPU the steps run under bf16 autocast, as the recipes do; on the CPU in fp32.

    python benchmarks/throughput.py --tiny                 # CPU check, tiny backbone, small sizes
    python benchmarks/throughput.py                        # full backbone: 1008 px x 8, semseg 518 px x 16
"""

import argparse
import contextlib
import json
import time
from collections.abc import Callable

import torch
import torchvision
from torch.nn import functional as F

from vitdense.backbones import BirderBackbone, SimpleFeaturePyramid
from vitdense.heads import FasterRCNN, MaskRCNN, PyramidSegmenter, paste_detections, whole_inference

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
        labels = torch.randint(1, 81, (boxes,), generator=generator)
        targets.append({"boxes": xyxy.to(device), "labels": labels.to(device), "masks": masks.to(device)})
    return images.to(device), targets


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Reporter:
    """Times a step function and prints its JSON row."""

    def __init__(self, device: torch.device, steps: int, warmup: int) -> None:
        self.device, self.steps, self.warmup = device, steps, warmup
        self.device_name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"

    def __call__(self, name: str, step: Callable[[], None], size: int, batch: int) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for _ in range(self.warmup):
            step()
        _sync(self.device)
        start = time.perf_counter()
        for _ in range(self.steps):
            step()
        _sync(self.device)
        seconds = (time.perf_counter() - start) / self.steps
        peak = torch.cuda.max_memory_allocated() / 2**30 if self.device.type == "cuda" else None
        row = {"name": name, "size": size, "batch": batch, "img_s": batch / seconds, "peak_gib": peak}
        print(json.dumps({**row, "device": self.device_name}), flush=True)


def train_step(model: torch.nn.Module, loss_fn: Callable[[], torch.Tensor], autocast) -> Callable[[], None]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        with autocast:
            loss = loss_fn()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="tiny backbone, small sizes (CPU check)")
    parser.add_argument("--size", type=int, default=None, help="detection canvas, a multiple of 56 (1008)")
    parser.add_argument("--batch", type=int, default=None, help="detection images per step (8)")
    parser.add_argument(
        "--seg-size", type=int, default=None, help="segmentation crop, a multiple of 14 (518)"
    )
    parser.add_argument("--seg-batch", type=int, default=None, help="segmentation crops per step (16)")
    parser.add_argument("--boxes", type=int, default=20, help="ground-truth boxes and masks per image")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--rows", nargs="+", default=["faster_rcnn", "mask_rcnn", "torchvision", "semseg"])
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument("--original-size", type=int, nargs=2, default=(1000, 1333), metavar=("H", "W"))
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size, batch = args.size or (224 if args.tiny else 1008), args.batch or (2 if args.tiny else 8)
    seg_size, seg_batch = (
        args.seg_size or (224 if args.tiny else 518),
        args.seg_batch or (2 if args.tiny else 16),
    )
    report = Reporter(device, args.steps or (2 if args.tiny else 10), 1 if args.tiny else args.warmup)
    cuda = device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    def vit() -> BirderBackbone:
        return BirderBackbone(config=TINY if args.tiny else None, grad_checkpointing=args.grad_checkpointing)

    images, targets = synthetic_batch(batch, size, args.boxes, device)
    sizes = [(size, size)] * batch
    scale = size / max(args.original_size)

    def detector_rows(arch: str) -> None:
        model = (MaskRCNN if arch == "mask_rcnn" else FasterRCNN)(80, SimpleFeaturePyramid(vit())).to(device)
        keys = ("boxes", "labels", "masks") if arch == "mask_rcnn" else ("boxes", "labels")
        arch_targets = [{key: target[key] for key in keys} for target in targets]
        model.train()
        step = train_step(model, lambda: sum(model(images, sizes, arch_targets).values()), autocast)
        report(f"vitdense_{arch}_train", step, size, batch)

        def infer() -> None:
            with torch.inference_mode(), autocast:
                detections = model(images, sizes)
            paste_detections(detections, [scale] * batch, [tuple(args.original_size)] * batch)

        model.eval()
        report(f"vitdense_{arch}_inference", infer, size, batch)

    for arch in ("faster_rcnn", "mask_rcnn"):
        if arch in args.rows:
            detector_rows(arch)
            if cuda:
                torch.cuda.empty_cache()

    if "torchvision" in args.rows:
        peer = torchvision.models.detection.maskrcnn_resnet50_fpn_v2(
            weights=None, weights_backbone=None, num_classes=81, min_size=size, max_size=size
        ).to(device)
        float_images = list(images.float() / 255)
        peer.train()
        step = train_step(peer, lambda: sum(peer(float_images, targets).values()), autocast)
        report("torchvision_maskrcnn_resnet50_fpn_v2_train", step, size, batch)

        def infer_peer() -> None:
            with torch.inference_mode(), autocast:
                peer(float_images)

        peer.eval()
        report("torchvision_maskrcnn_resnet50_fpn_v2_inference", infer_peer, size, batch)
        peer = None  # free its memory before the next rows
        if cuda:
            torch.cuda.empty_cache()

    if "semseg" in args.rows:
        backbone = SimpleFeaturePyramid(vit(), scale_factors=(4.0, 2.0, 1.0), top_block=False)
        segmenter = PyramidSegmenter(150, backbone, in_features=("p2", "p3", "p4"), channels=256).to(device)
        crops = torch.randint(0, 256, (seg_batch, 3, seg_size, seg_size), dtype=torch.uint8, device=device)
        labels = torch.randint(0, 150, (seg_batch, seg_size, seg_size), device=device)

        def seg_loss() -> torch.Tensor:
            outputs = segmenter(crops)
            return F.cross_entropy(outputs["out"], labels) + 0.4 * F.cross_entropy(outputs["aux"], labels)

        segmenter.train()
        report("vitdense_semseg_train", train_step(segmenter, seg_loss, autocast), seg_size, seg_batch)

        def infer_seg() -> None:
            with torch.inference_mode(), autocast:
                whole_inference(
                    segmenter, crops, [(seg_size, seg_size)] * seg_batch, [(512, 683)] * seg_batch
                )

        segmenter.eval()
        report("vitdense_semseg_inference", infer_seg, seg_size, seg_batch)


if __name__ == "__main__":
    main()
