"""Time to paste Mask R-CNN masks at the original resolution: torchvision's loop vs vitdense's `paste_masks`;
and to write them as COCO RLE for evaluation: `pycocotools.mask.encode` of whole frames vs `encode_masks`.

Both include the threshold at 0.5 (what `paste_detections` returns: bool (N, h, w)). Boxes are COCO-like:
sides log-uniform from 16 to 700 px, aspect 1:2 to 2:1, clipped to the image. Each measurement prints one JSON
line: device, CPU threads, mask dtype, masks, image size (h, w), median ms per image for torchvision and for
vitdense, their ratio, and vitdense's foreground pixels per torchvision's (they do not paste the same masks:
torchvision's are about a pixel larger on every side; see `vitdense/heads/mask_paste.py`). Runs on the CPU
and, when there is one, on the GPU (fp32 and bf16 masks, synchronised around each timed call).

`mask_rle` rows (fp32): the evaluator's RLE encoding of the pasted bool masks, as it was (copied whole to the
host, made Fortran-ordered, `pycocotools.mask.encode`) and as it is (`encode_masks`: each mask's region only),
and whether the RLEs are the same.

    python benchmarks/mask_paste.py --tiny      # seconds: 10 masks into 200x300
    python benchmarks/mask_paste.py             # 100 and 20 masks into 1000x1333
    python benchmarks/mask_paste.py --photo     # also 100 masks into a 12 MP photo (3024x4032), ~4 minutes
    python benchmarks/mask_paste.py --device cuda   # the GPU rows only
"""

import argparse
import json
import time
from collections.abc import Callable

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torchvision.models.detection.roi_heads import paste_masks_in_image

from vitdense.datamodules.instance_masks import encode_masks
from vitdense.heads.mask_paste import paste_masks


def coco_like(
    num: int, size: tuple[int, int], dtype: torch.dtype, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(num, 1, 28, 28) smooth probabilities and (num, 4) xyxy boxes inside an image of (h, w) `size`."""
    gen = torch.Generator().manual_seed(seed)
    h, w = size
    side = torch.exp(torch.empty(num).uniform_(2.77, 6.55, generator=gen))  # 16 .. 700 px
    aspect = torch.exp(torch.empty(num).uniform_(-0.69, 0.69, generator=gen))
    bw, bh = side * aspect.sqrt(), side / aspect.sqrt()
    cx, cy = torch.rand(num, generator=gen) * w, torch.rand(num, generator=gen) * h
    boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
    boxes = torch.min(boxes.clamp(min=0), torch.tensor([w, h, w, h], dtype=torch.float32))
    logits = torch.nn.functional.interpolate(
        torch.randn(num, 1, 7, 7, generator=gen) * 4, size=(28, 28), mode="bilinear"
    )
    return logits.sigmoid().to(dtype), boxes


def encode_whole_frames(masks: torch.Tensor) -> list[dict]:
    """The evaluator's RLE encoding before `encode_masks`: every whole frame to the host, Fortran order."""
    frames = masks.cpu().numpy().astype(np.uint8)
    return mask_utils.encode(np.asfortranarray(frames.transpose(1, 2, 0))) if len(frames) else []


def _time(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall milliseconds of `fn` over `repeats` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="10 masks into 200x300, a few repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--photo", action="store_true", help="also 100 masks into a 3024x4032 photo")
    parser.add_argument(
        "--device",
        choices=["all", "cpu", "cuda"],
        default="all",
        help="where to run (all: CPU, and GPU if any)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = [(10, (200, 300))] if args.tiny else [(100, (1000, 1333)), (20, (1000, 1333))]
    if args.photo:
        cases.append((100, (3024, 4032)))
    repeats = args.repeats or (3 if args.tiny else 10)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    if args.device != "all":
        if args.device == "cuda" and not torch.cuda.is_available():
            parser.error("--device cuda: no GPU here")
        devices = [torch.device(args.device)]
    for device in devices:
        dtypes = [torch.float32] + ([torch.bfloat16] if device.type == "cuda" else [])
        for dtype in dtypes:
            for num, size in cases:
                masks, boxes = coco_like(num, size, dtype)
                masks, boxes = masks.to(device), boxes.to(device)
                tv = _time(lambda: paste_masks_in_image(masks, boxes, size)[:, 0] > 0.5, device, repeats)
                ours = _time(lambda: paste_masks(masks, boxes, size, threshold=0.5), device, repeats)
                area_ratio = (
                    paste_masks(masks, boxes, size).sum()
                    / (paste_masks_in_image(masks, boxes, size) > 0.5).sum()
                ).item()
                row = {
                    "name": "mask_paste",
                    "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                    "threads": torch.get_num_threads() if device.type == "cpu" else None,
                    "dtype": str(dtype).removeprefix("torch."),
                    "masks": num,
                    "image_size": list(size),
                    "torchvision_ms_per_image": round(tv, 3),
                    "vitdense_ms_per_image": round(ours, 3),
                    "speedup": round(tv / ours, 2),
                    "foreground_vs_torchvision": round(area_ratio, 3),
                }
                print(json.dumps(row), flush=True)
                if dtype != torch.float32:
                    continue
                pasted = paste_masks(masks, boxes, size)
                whole = _time(lambda: encode_whole_frames(pasted), device, repeats)
                regions = _time(lambda: encode_masks(pasted), device, repeats)
                row = {
                    "name": "mask_rle",
                    "device": row["device"],
                    "threads": row["threads"],
                    "masks": num,
                    "image_size": list(size),
                    "whole_frames_ms_per_image": round(whole, 3),
                    "vitdense_ms_per_image": round(regions, 3),
                    "speedup": round(whole / regions, 2),
                    "rles_equal": encode_whole_frames(pasted) == encode_masks(pasted),
                }
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
