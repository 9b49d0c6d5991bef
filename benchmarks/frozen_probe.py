"""Frozen linear probe at a resolution above pretraining: RoPE positions extrapolated vs mapped to the
pretraining grid (``pt_grid_size``), each with and without the ViT's final norm (``final_norm``).

For each of the four variants, the frozen backbone (the last 4 blocks concatenated, as in
``recipes/ade20k_linear_frozen.yaml``) encodes a small labelled set once at ``--size`` (square resize, labels
nearest); DINOv2's linear head (BatchNorm + 1x1 conv, ``vitdense.heads.LinearHead``) is then fitted on the
cached features for a fixed number of AdamW steps with the same seed, and scored on the held-out images
(mIoU, aAcc, mAcc over the split's confusion matrix). The variants share the backbone weights, the data and
the head's initialisation and batches: only the two options differ. One JSON line per variant, then a
markdown table.

    python benchmarks/frozen_probe.py --tiny              # tiny random backbone, synthetic shapes
    python benchmarks/frozen_probe.py --weights models/rope_vit_reg8_so150m_p14_swiglu_rms_avg_capi.pt \\
        --data ../shared/data/camvid_val --size 518             # the real question, on a GPU if there is one

Data: ``shapes`` (default) writes the synthetic semantic shapes set (5 classes, background included) to a
temporary folder; a folder in CamVid's layout (``images/*.png``, ``labels/*.png`` with the same names, 11
classes, 11 = void) is split into every third image for evaluation and the rest for training. With ``--tiny``
(random weights) the numbers show that the script works, not which protocol is better.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from vitdense.backbones import BirderBackbone
from vitdense.datamodules import write_shapes_semseg
from vitdense.heads import LinearHead
from vitdense.tasks.segmentation_metrics import segmentation_scores

TINY_CONFIG = {"hidden_dim": 64, "num_layers": 2, "num_heads": 4, "mlp_dim": 128, "drop_path_rate": 0.0}
VARIANTS = [("extrapolated", False), ("mapped", False), ("extrapolated", True), ("mapped", True)]
Pairs = list[tuple[Path, Path]]


def shapes_pairs(root: Path, num_train: int, num_val: int, seed: int) -> tuple[Pairs, Pairs, int, int]:
    """Train and val (image, label) files of a new synthetic shapes set, its class count and ignore index."""
    base = write_shapes_semseg(root, num_train=num_train, num_val=num_val, seed=seed)
    splits = []
    for split in ("training", "validation"):
        images = sorted((base / "images" / split).glob("*.jpg"))
        splits.append([(image, base / "annotations" / split / f"{image.stem}.png") for image in images])
    return splits[0], splits[1], 5, 255


def camvid_pairs(root: Path, num_train: int, num_val: int) -> tuple[Pairs, Pairs, int, int]:
    """Every third image of a CamVid-layout folder for evaluation, the others for training."""
    images = sorted((root / "images").glob("*.png"))
    if not images:
        raise FileNotFoundError(f"{root}: no images/*.png; pass --data shapes or a folder in CamVid's layout")
    pairs = [(image, root / "labels" / image.name) for image in images]
    return [p for i, p in enumerate(pairs) if i % 3][:num_train], pairs[::3][:num_val], 11, 11


def load(pairs: Pairs, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float (N, 3, size, size) images in [0, 1] (bilinear) and int64 (N, size, size) labels (nearest)."""
    images, labels = [], []
    for image_file, label_file in pairs:
        image = Image.open(image_file).convert("RGB").resize((size, size), Image.BILINEAR)
        label = Image.open(label_file).resize((size, size), Image.NEAREST)
        images.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1))
        labels.append(torch.from_numpy(np.asarray(label).astype(np.int64)))
    return torch.stack(images).float() / 255, torch.stack(labels)


def build_backbone(args: argparse.Namespace, positions: str, final_norm: bool) -> BirderBackbone:
    """The frozen backbone of one variant; the tiny one is drawn from the same seed for every variant."""
    options = {
        "freeze": "all",
        "out_indices": list(range(-args.last_blocks, 0)),
        "final_norm": final_norm,
        "pt_grid_size": [args.pt_grid, args.pt_grid] if positions == "mapped" else None,
    }
    if args.tiny:
        torch.manual_seed(args.seed)
        return BirderBackbone(config=TINY_CONFIG, **options)
    return BirderBackbone(weights=str(args.weights), **options)


@torch.no_grad()
def encode(
    backbone: BirderBackbone, images: torch.Tensor, batch_size: int, device: torch.device
) -> torch.Tensor:
    """float16 (N, C, size / 14, size / 14) frozen features, kept on the host (half the memory of float32)."""
    chunks = [backbone(batch.to(device)).half().cpu() for batch in images.split(batch_size)]
    return torch.cat(chunks)


def fit_and_score(
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    ignore_index: int,
    args: argparse.Namespace,
    device: torch.device,
) -> dict[str, float]:
    """Fit a LinearHead on (features, labels) for ``args.steps`` steps; mIoU / aAcc / mAcc on ``val``."""
    features, labels = train
    torch.manual_seed(args.seed)
    head = LinearHead(num_classes, features.shape[1]).to(device).train()
    optimizer = torch.optim.AdamW(head.parameters(), lr=args.lr, weight_decay=1e-4)  # the recipe's
    batches = torch.Generator().manual_seed(args.seed)
    for _ in range(args.steps):
        index = torch.randint(len(features), (min(args.batch_size, len(features)),), generator=batches)
        target = labels[index].to(device)
        logits = head(features[index].to(device, torch.float32))
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, target, ignore_index=ignore_index)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    head.eval()
    confmat = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    with torch.no_grad():
        for batch, target in zip(val[0].split(args.batch_size), val[1].split(args.batch_size)):
            target = target.to(device)
            logits = head(batch.to(device, torch.float32))
            predicted = F.interpolate(logits, size=target.shape[-2:], mode="bilinear").argmax(1)
            valid = target != ignore_index
            confmat += torch.bincount(
                target[valid] * num_classes + predicted[valid], minlength=num_classes * num_classes
            )
    scores = segmentation_scores(confmat.view(num_classes, num_classes).cpu())
    return {name: round(float(scores[name]), 4) for name in ("mIoU", "aAcc", "mAcc")}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--tiny", action="store_true", help="tiny backbone with random weights")
    source.add_argument("--weights", type=Path, help="birder weights file of the default network (CAPI)")
    parser.add_argument("--data", default="shapes", help="'shapes' or a folder in CamVid's layout")
    parser.add_argument("--size", type=int, default=448, help="square input side, a multiple of 14, > 224")
    parser.add_argument("--pt-grid", type=int, default=16, help="pretraining grid in patches (224 px / 14)")
    parser.add_argument("--last-blocks", type=int, default=4, help="concatenate the last N blocks")
    parser.add_argument("--num-train", type=int, default=64)
    parser.add_argument("--num-val", type=int, default=32)
    parser.add_argument("--steps", type=int, default=300, help="head training steps")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.size % 14 or args.size <= 14 * args.pt_grid:
        parser.error(f"--size must be a multiple of 14 above the pretraining size {14 * args.pt_grid}")
    if args.tiny:
        args.last_blocks = min(args.last_blocks, TINY_CONFIG["num_layers"])
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the four variants; returns their rows (also printed)."""
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as scratch:
        if args.data == "shapes":
            train_pairs, val_pairs, num_classes, ignore_index = shapes_pairs(
                Path(scratch), args.num_train, args.num_val, args.seed
            )
        else:
            train_pairs, val_pairs, num_classes, ignore_index = camvid_pairs(
                Path(args.data), args.num_train, args.num_val
            )
        train_images, train_labels = load(train_pairs, args.size)
        val_images, val_labels = load(val_pairs, args.size)

    rows = []
    for positions, final_norm in VARIANTS:
        start = time.perf_counter()
        backbone = build_backbone(args, positions, final_norm).to(device).eval()
        train_features = encode(backbone, train_images, args.batch_size, device)
        val_features = encode(backbone, val_images, args.batch_size, device)
        del backbone
        train, val = (train_features, train_labels), (val_features, val_labels)
        scores = fit_and_score(train, val, num_classes, ignore_index, args, device)
        row = {
            "positions": positions,
            "final_norm": final_norm,
            **scores,
            "backbone": "tiny-random" if args.tiny else str(args.weights),
            "data": args.data,
            "size": args.size,
            "train": len(train_pairs),
            "val": len(val_pairs),
            "steps": args.steps,
            "device": device.type,
            "seconds": round(time.perf_counter() - start, 1),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)

    print("\n| RoPE positions | final norm | mIoU | aAcc | mAcc |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['positions']} | {row['final_norm']} | {row['mIoU']} | {row['aAcc']} | {row['mAcc']} |")
    return rows


if __name__ == "__main__":
    main()
