"""CPU forward+backward time of vitdense's gather RoIAlign vs torchvision's kernel (both aligned=True).

Run: `cd /work/main && .venv/bin/python benchmarks/roi_align_cpu.py [--threads N] [--repeats R]`

The case mimics one Mask R-CNN step on a 256x256-canvas-ish batch: 4 images, 256-channel maps at
64x64, 32x32, 16x16, 8x8 (p2..p5), box RoIs pooled to 7x7 and mask RoIs to 14x14, sampling_ratio 2.
RoIs are spread over the levels by the FPN rule, as `ExactMultiScaleRoIAlign` does.
"""

import argparse
import time

import torch
import torchvision

from vitdense.heads.roi_align import ExactMultiScaleRoIAlign, roi_align_gather

STRIDES = [3.5, 7.0, 14.0, 28.0]
SIZES = [64, 32, 16, 8]


def _boxes(num: int, batch: int, canvas: float, gen: torch.Generator) -> list[torch.Tensor]:
    per_image = []
    for _ in range(batch):
        side = torch.exp(torch.empty(num // batch).uniform_(3.0, 5.4, generator=gen))  # ~20..220 px
        cx, cy = torch.rand(2, num // batch, generator=gen) * canvas
        w = side * torch.empty(num // batch).uniform_(0.6, 1.6, generator=gen)
        h = side * side / w
        per_image.append(torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1).clamp(0, canvas))
    return per_image


def _step(impl, feats, rois, levels, out: int) -> None:
    pooled = []
    for lvl, (f, s) in enumerate(zip(feats, STRIDES)):
        idx = torch.where(levels == lvl)[0]
        pooled.append(impl(f, rois[idx], out, 1.0 / s, 2))
    loss = sum((p * p).sum() for p in pooled)
    loss.backward()


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    batch, channels = 4, 256
    feats = [torch.randn(batch, channels, s, s, generator=gen, requires_grad=True) for s in SIZES]
    canvas = SIZES[0] * STRIDES[0]

    def tv(f, r, o, scale, sr):
        return torchvision.ops.roi_align(f, r, o, spatial_scale=scale, sampling_ratio=sr, aligned=True)

    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, threads {args.threads}")
    print("| case | torchvision (ms) | gather (ms) | speed-up |")
    print("|---|---|---|---|")
    for num, out in [(512, 7), (128, 14), (2048, 7), (512, 14)]:
        boxes = _boxes(num, batch, canvas, gen)
        pooler = ExactMultiScaleRoIAlign(["p2", "p3", "p4", "p5"], STRIDES, out)
        levels = pooler.assign_levels(boxes)
        rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(boxes)])
        t_tv = _time(lambda: _step(tv, feats, rois, levels, out), args.repeats)
        t_g = _time(lambda: _step(roi_align_gather, feats, rois, levels, out), args.repeats)
        print(f"| {num} RoIs {out}x{out} | {t_tv * 1e3:.1f} | {t_g * 1e3:.1f} | {t_tv / t_g:.1f}x |")


if __name__ == "__main__":
    main()
