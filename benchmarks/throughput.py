"""Training and inference throughput of vitdense's models and of a peer, on one synthetic batch each.

Rows: the ViT backbone alone (forward + backward, forward), vitdense Faster R-CNN and Mask R-CNN (train step,
inference with mask pasting at original size), the two peers on the same batch (birder's own ViTDet, a Faster
R-CNN on the same backbone, and torchvision's maskrcnn_resnet50_fpn_v2), and vitdense's semantic segmenter
(pyramid + Semantic FPN + aux head) at a crop. Each prints one JSON line: name, size, batch, img/s, peak GiB,
device, and the speed switches in effect. On a GPU the steps run under bf16 autocast, as the recipes do; on
the CPU in fp32. Weights are random: speed does not depend on them. ``--tiny`` also narrows the pyramid and
heads to 64 channels, so that the whole run stays under two minutes on two cores.

    python benchmarks/throughput.py --tiny                 # CPU check, tiny backbone, small sizes
    python benchmarks/throughput.py                        # full backbone: 1008 px x 8, semseg 518 px x 16
    python benchmarks/throughput.py --compile              # vitdense rows as with torch_compile: true
    python benchmarks/throughput.py --torchvision-parts --torchvision-paste   # undo those optimisations
    python benchmarks/throughput.py --rows mask_rcnn --profile   # where a row's time goes (torch.profiler)
"""

import argparse
import contextlib
import json
import time
from collections.abc import Callable

import torch
import torchvision
from birder.data.transforms.classification import get_rgb_stats
from birder.model_registry import registry
from torch.nn import functional as F
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.ops import boxes as box_ops

from vitdense.backbones import DEFAULT_NETWORK, BirderBackbone, SimpleFeaturePyramid
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


def busy_box_predictor(model: torch.nn.Module, classes: int = 5, probability: float = 0.15) -> None:
    """Make an untrained detector's inference as busy as a trained one's on a crowded image.

    Random weights give every RoI ~1/81 per class, under the 0.05 score threshold: inference would skip NMS
    work, the mask head and mask pasting. Here every RoI scores ``probability`` for ``classes`` classes, so
    each image has 1000 x ``classes`` candidates for the per-class NMS and keeps its 100 best detections.
    """
    cls_score = model.roi_heads.box_predictor.cls_score
    logit = torch.log(torch.tensor(probability / (1 - classes * probability)))
    with torch.no_grad():
        cls_score.weight.zero_()
        cls_score.bias.fill_(-30.0)
        cls_score.bias[0] = 0.0  # background
        cls_score.bias[1 : classes + 1] = logit


def use_torchvision_parts(model: torch.nn.Module) -> None:
    """Put back torchvision's matcher, sampler and box coder, which synchronise the host (the baseline)."""
    for part in (model.rpn, model.roi_heads):
        matcher, sampler, coder = part.proposal_matcher, part.fg_bg_sampler, part.box_coder
        part.proposal_matcher = det_utils.Matcher(
            matcher.high_threshold, matcher.low_threshold, matcher.allow_low_quality_matches
        )
        part.fg_bg_sampler = det_utils.BalancedPositiveNegativeSampler(
            sampler.batch_size_per_image, sampler.positive_fraction
        )
        part.box_coder = det_utils.BoxCoder(coder.weights, coder.bbox_xform_clip)


def paste_with_torchvision(detections: list[dict], scales: list[float], sizes: list[tuple[int, int]]) -> None:
    """``paste_detections`` with torchvision's one-mask-at-a-time pasting (the baseline)."""
    for det, scale, size in zip(detections, scales, sizes):
        boxes = box_ops.clip_boxes_to_image(det["boxes"] / scale, size)
        if "masks" in det:
            paste_masks_in_image(det["masks"], boxes, size)[:, 0] > 0.5


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Reporter:
    """Times a step function and prints its JSON row (and, with ``profile``, where its time goes)."""

    def __init__(
        self, device: torch.device, steps: int, warmup: int, switches: dict[str, bool], profile: bool
    ) -> None:
        self.device, self.steps, self.warmup = device, steps, warmup
        self.switches, self.profile = switches, profile
        self.device_name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"

    def __call__(
        self, name: str, step: Callable[[], None], size: int, batch: int, vitdense: bool = True
    ) -> None:
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
        switches = self.switches if vitdense else {}
        print(json.dumps({**row, "device": self.device_name, **switches}), flush=True)
        if self.profile:
            self._profile(name, step)

    def _profile(self, name: str, step: Callable[[], None]) -> None:
        cuda = self.device.type == "cuda"
        activities = [torch.profiler.ProfilerActivity.CPU]
        if cuda:
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as profiler:
            for _ in range(3):
                step()
            _sync(self.device)
        sort_by = "self_device_time_total" if cuda else "self_cpu_time_total"
        print(f"# profile of {name}, 3 steps, by {sort_by}", flush=True)
        print(profiler.key_averages().table(sort_by=sort_by, row_limit=30), flush=True)


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
    parser.add_argument(
        "--rows",
        nargs="+",
        default=["backbone", "faster_rcnn", "mask_rcnn", "vitdet", "torchvision", "semseg"],
        choices=["backbone", "faster_rcnn", "mask_rcnn", "vitdet", "torchvision", "semseg"],
    )
    parser.add_argument(
        "--compile", action="store_true", help="vitdense rows: compile as torch_compile: true does"
    )
    parser.add_argument(
        "--grad-checkpointing",
        nargs="?",
        const="all",
        metavar="K",
        help="vitdense rows: recompute every ViT block in backward, or the first K",
    )
    parser.add_argument(
        "--torchvision-parts",
        action="store_true",
        help="detectors: torchvision's matcher, sampler, box coder",
    )
    parser.add_argument(
        "--torchvision-paste", action="store_true", help="inference: torchvision's mask pasting"
    )
    parser.add_argument("--profile", action="store_true", help="after each row, a torch.profiler table")
    parser.add_argument("--original-size", type=int, nargs=2, default=(1000, 1333), metavar=("H", "W"))
    args = parser.parse_args()
    checkpointing: bool | int = args.grad_checkpointing is not None
    if args.grad_checkpointing not in (None, "all"):
        # The tiny backbone has 2 blocks: the GPU session's K still runs there.
        checkpointing = min(int(args.grad_checkpointing), TINY["num_layers"] if args.tiny else 10**6)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size, batch = args.size or (224 if args.tiny else 1008), args.batch or (2 if args.tiny else 8)
    seg_size, seg_batch = (
        args.seg_size or (224 if args.tiny else 518),
        args.seg_batch or (2 if args.tiny else 16),
    )
    switches = {
        "compile": args.compile,
        "grad_checkpointing": checkpointing,
        "torchvision_parts": args.torchvision_parts,
        "torchvision_paste": args.torchvision_paste,
    }
    steps, warmup = args.steps or (1 if args.tiny else 10), 1 if args.tiny else args.warmup
    report = Reporter(device, steps, warmup, switches, args.profile)
    cuda = device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    config = TINY if args.tiny else None
    width = 64 if args.tiny else 256  # pyramid and head channels

    def vit() -> BirderBackbone:
        return BirderBackbone(config=config, grad_checkpointing=checkpointing)

    def compiled(module: torch.nn.Module) -> torch.nn.Module:
        # What the tasks do with torch_compile: true (the backbone of a detector, a whole segmenter).
        if args.compile:
            module.compile(dynamic=False)
        return module

    def release() -> None:
        if cuda:
            torch.cuda.empty_cache()

    images, targets = synthetic_batch(batch, size, args.boxes, device)
    float_images = images.float() / 255
    box_targets = [{key: target[key] for key in ("boxes", "labels")} for target in targets]
    sizes = [(size, size)] * batch
    scale = size / max(args.original_size)

    if "backbone" in args.rows:
        backbone = vit().to(device)
        compiled(backbone)
        backbone.train()
        # A scalar that depends on every output, so that backward runs through the whole ViT.
        step = train_step(backbone, lambda: backbone(float_images).float().square().mean(), autocast)
        report("vitdense_backbone_train", step, size, batch)

        def encode() -> None:
            with torch.inference_mode(), autocast:
                backbone(float_images)

        backbone.eval()
        report("vitdense_backbone_inference", encode, size, batch)
        del backbone, step
        release()

    def detector_rows(
        name: str, model, loss: Callable[[], torch.Tensor], infer: Callable[[], None], **kw
    ) -> None:
        """A detector's train-step row, then its inference row with 100 detections per image."""
        model.train()
        report(f"{name}_train", train_step(model, loss, autocast), size, batch, **kw)
        model.eval()
        busy_box_predictor(model)
        report(f"{name}_inference", infer, size, batch, **kw)

    def vitdense_rows(arch: str) -> None:
        detector = MaskRCNN if arch == "mask_rcnn" else FasterRCNN
        pyramid = SimpleFeaturePyramid(vit(), out_channels=width)
        model = detector(80, pyramid, head_dim=width, fc_dim=4 * width).to(device)
        compiled(model.backbone)
        if args.torchvision_parts:
            use_torchvision_parts(model)
        arch_targets = targets if arch == "mask_rcnn" else box_targets
        paste = paste_with_torchvision if args.torchvision_paste else paste_detections

        def infer() -> None:
            with torch.inference_mode(), autocast:
                detections = model(images, sizes)
            paste(detections, [scale] * batch, [tuple(args.original_size)] * batch)

        def loss() -> torch.Tensor:
            return sum(model(images, sizes, arch_targets).values())

        detector_rows(f"vitdense_{arch}", model, loss, infer)

    for arch in ("faster_rcnn", "mask_rcnn"):
        if arch in args.rows:
            vitdense_rows(arch)
            release()

    if "vitdet" in args.rows:
        # birder's own ViTDet (Faster R-CNN, torchvision's power-of-two RoI scales) on the same backbone. It
        # takes normalised images, as birder's training script feeds it.
        net = registry.net_factory(DEFAULT_NETWORK, 0, config=config, size=(size, size))
        peer = registry.detection_net_factory("vitdet", 80, net, size=(size, size)).to(device)
        stats = get_rgb_stats("birder")
        mean = torch.tensor(stats["mean"], device=device).view(1, 3, 1, 1)
        std = torch.tensor(stats["std"], device=device).view(1, 3, 1, 1)
        normalised = (float_images - mean) / std

        def infer_vitdet() -> None:
            with torch.inference_mode(), autocast:
                peer(normalised)

        def loss_vitdet() -> torch.Tensor:
            return sum(peer(normalised, box_targets)[1].values())

        detector_rows("birder_vitdet", peer, loss_vitdet, infer_vitdet, vitdense=False)
        del net, peer
        release()

    if "torchvision" in args.rows:
        peer = torchvision.models.detection.maskrcnn_resnet50_fpn_v2(
            weights=None, weights_backbone=None, num_classes=81, min_size=size, max_size=size
        ).to(device)
        image_list = list(float_images)

        def infer_peer() -> None:
            with torch.inference_mode(), autocast:
                peer(image_list)

        def loss_peer() -> torch.Tensor:
            return sum(peer(image_list, targets).values())

        detector_rows("torchvision_maskrcnn_resnet50_fpn_v2", peer, loss_peer, infer_peer, vitdense=False)
        del peer
        release()

    if "semseg" in args.rows:
        backbone = SimpleFeaturePyramid(vit(), width, scale_factors=(4.0, 2.0, 1.0), top_block=False)
        segmenter = PyramidSegmenter(150, backbone, in_features=("p2", "p3", "p4"), channels=width).to(device)
        compiled(segmenter)
        crops = torch.randint(0, 256, (seg_batch, 3, seg_size, seg_size), dtype=torch.uint8, device=device)
        labels = torch.randint(0, 150, (seg_batch, seg_size, seg_size), device=device)

        def seg_loss() -> torch.Tensor:
            outputs = segmenter(crops)
            return F.cross_entropy(outputs["out"], labels) + 0.4 * F.cross_entropy(outputs["aux"], labels)

        segmenter.train()
        report("vitdense_semseg_train", train_step(segmenter, seg_loss, autocast), seg_size, seg_batch)

        def infer_seg() -> None:
            # Eager, as SemanticSegmentationTask runs whole-image evaluation (each image at its own size).
            with torch.inference_mode(), autocast, torch.compiler.set_stance("force_eager"):
                whole_inference(
                    segmenter, crops, [(seg_size, seg_size)] * seg_batch, [(512, 683)] * seg_batch
                )

        segmenter.eval()
        report("vitdense_semseg_inference", infer_seg, seg_size, seg_batch)


if __name__ == "__main__":
    main()
