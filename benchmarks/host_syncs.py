"""Where a training or inference step would make the host wait for the GPU, found on the CPU.

On a GPU, an operation whose result the host needs (``.item()``, ``bool(tensor)``, ``nonzero``, boolean
indexing, ``.tolist()``, torchvision's NMS, ...) stops the host until every queued kernel has run; while it
waits it launches nothing, so the GPU then idles while the host catches up. This script runs one step on the
CPU under a dispatch mode that records every such operation with the line of Python that made it, and
prints the count per line. The same code runs on the GPU, so the same lines synchronise there.

    python benchmarks/host_syncs.py                        # Mask R-CNN and Faster R-CNN, train and eval
    python benchmarks/host_syncs.py --rows mask_rcnn_train --top 40

With a GPU it also runs each step on it under ``torch.cuda.set_sync_debug_mode("warn")`` and counts the
warnings per line: PyTorch's own record of what synchronised (it may miss some), to compare with the count
made on the CPU.
"""

import argparse
import collections
import json
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torchvision.ops.boxes
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import TINY, busy_box_predictor, synthetic_batch  # noqa: E402

from vitdense.backbones import BirderBackbone, SimpleFeaturePyramid  # noqa: E402
from vitdense.heads import FasterRCNN, MaskRCNN, mask_paste, paste_detections  # noqa: E402

aten = torch.ops.aten

# Operations whose output size or value the host must read from the device.
# (Under inference_mode, composite operations such as one-argument ``where`` or ``item`` come undecomposed.)
SYNCING_OPS = {
    aten._local_scalar_dense.default,  # .item(), bool(t), int(t), float(t)
    aten.item.default,
    aten.is_nonzero.default,
    aten.nonzero.default,
    aten.where.default,  # torch.where(condition): nonzero
    aten.argwhere.default,
    aten.masked_select.default,
    aten.unique_consecutive.default,
    aten._unique2.default,
    aten.unique_dim.default,
    aten.repeat_interleave.Tensor,  # unless given output_size
    aten.bincount.default,
    aten.equal.default,
    torch.ops.torchvision.nms.default,  # copies its keep mask to the host
}
INDEXING_OPS = {
    aten.index.Tensor,
    aten.index_put.default,
    aten.index_put_.default,
    aten._index_put_impl_.default,
}


def _boolean_index(func, args: tuple) -> bool:
    """Indexing with a boolean mask, which needs the mask's count on the host, except ``t[mask] = scalar``:
    ATen runs that as ``masked_fill_``."""
    indices = args[1] if len(args) > 1 else []
    if not any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or []):
        return False
    writes_a_scalar = func is not aten.index.Tensor and len(args) > 2 and args[2].dim() == 0
    return not (writes_a_scalar and len(indices) == 1)


def _caller() -> str:
    """The innermost frame of vitdense, torchvision or this benchmark that led to the operation."""
    for frame in reversed(traceback.extract_stack()[:-3]):
        path = frame.filename
        if "/torch/" in path and "/torchvision/" not in path:
            continue
        for marker in ("vitdense/", "torchvision/", "benchmarks/", "birder/"):
            if marker in path:
                return f"{marker}{path.split(marker, 1)[1]}:{frame.lineno} {frame.name}"
    return "?"


class HostSyncCounter(TorchDispatchMode):
    """Counts, per calling line, the operations that would synchronise a CUDA device."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()
        self.operations = 0  # every dispatched operation: on a GPU, about one kernel launch each

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.operations += 1
        sized = func is aten.repeat_interleave.Tensor and (kwargs or {}).get("output_size") is not None
        if (func in SYNCING_OPS and not sized) or (func in INDEXING_OPS and _boolean_index(func, args)):
            self.counts[f"{func.__name__} @ {_caller()}"] += 1
        return func(*args, **(kwargs or {}))

    def record(self, what: str) -> None:
        self.counts[f"{what} @ {_caller()}"] += 1


@contextmanager
def as_on_cuda() -> Iterator[None]:
    """Take the code paths a GPU takes where they differ from the CPU's: torchvision's ``batched_nms`` loops
    over classes on the CPU above 1000 boxes but, on CUDA, offsets the boxes per class and calls NMS once up
    to 25000 boxes; ``paste_masks`` chunks and writes differently on a GPU."""
    vanilla = torchvision.ops.boxes._batched_nms_vanilla
    layout = mask_paste._layout
    mask_paste._layout = lambda device: layout(torch.device("cuda"))

    def cuda_choice(boxes, scores, idxs, iou_threshold):
        if boxes.numel() > 100_000:
            return vanilla(boxes, scores, idxs, iou_threshold)
        return torchvision.ops.boxes._batched_nms_coordinate_trick(boxes, scores, idxs, iou_threshold)

    torchvision.ops.boxes._batched_nms_vanilla = cuda_choice
    try:
        yield
    finally:
        torchvision.ops.boxes._batched_nms_vanilla = vanilla
        mask_paste._layout = layout


@contextmanager
def counting_host_syncs() -> Iterator[HostSyncCounter]:
    """Count host synchronisations inside the block. Besides the dispatcher's operations: ``.tolist()``,
    ``.cpu()`` and ``.numpy()`` (device-to-host copies on a GPU), and ``torch.tensor`` / ``torch.as_tensor``
    with a ``device`` (a copy from host memory, which PyTorch makes wait for the device's queue)."""
    counter = HostSyncCounter()
    originals = {}

    def reading(original, what):
        def read(*args, **kwargs):
            counter.record(what)
            return original(*args, **kwargs)

        return read

    def building(original, what):
        def build(*args, **kwargs):
            if kwargs.get("device") is not None:
                counter.record(what)
            return original(*args, **kwargs)

        return build

    for name in ("tolist", "cpu", "numpy"):
        originals[(torch.Tensor, name)] = getattr(torch.Tensor, name)
        setattr(torch.Tensor, name, reading(originals[(torch.Tensor, name)], f"Tensor.{name}"))
    for name in ("tensor", "as_tensor"):
        originals[(torch, name)] = getattr(torch, name)
        setattr(torch, name, building(originals[(torch, name)], f"torch.{name}(device=...)"))
    try:
        with counter:
            yield counter
    finally:
        for (owner, name), original in originals.items():
            setattr(owner, name, original)


@contextmanager
def counting_cuda_syncs() -> Iterator[collections.Counter]:
    """Count, per line, the synchronisations PyTorch reports on CUDA (``set_sync_debug_mode("warn")``)."""
    counts: collections.Counter[str] = collections.Counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield counts
        finally:
            torch.cuda.set_sync_debug_mode("default")
    for warning in caught:
        if "synchroniz" in str(warning.message):
            path = warning.filename
            short = next((path.split(m, 1)[1] for m in ("site-packages/", "work/") if m in path), path)
            counts[f"{short}:{warning.lineno}"] += 1


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    rows = ["faster_rcnn_train", "faster_rcnn_inference", "mask_rcnn_train", "mask_rcnn_inference"]
    parser.add_argument("--rows", nargs="+", default=rows, choices=rows)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--boxes", type=int, default=20)
    parser.add_argument("--top", type=int, default=25, help="lines printed per row")
    args = parser.parse_args()

    size = 224
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device, row in [(device, row) for device in devices for row in args.rows]:
        images, targets = synthetic_batch(args.batch, size, args.boxes, device)
        sizes = [(size, size)] * args.batch
        arch, mode = row.rsplit("_", 1)
        detector = MaskRCNN if arch == "mask_rcnn" else FasterRCNN
        model = detector(80, SimpleFeaturePyramid(BirderBackbone(config=TINY), 64), head_dim=64, fc_dim=256)
        model = model.to(device)
        keys = ("boxes", "labels", "masks") if arch == "mask_rcnn" else ("boxes", "labels")
        arch_targets = [{key: target[key] for key in keys} for target in targets]
        step: Callable[[], object]
        if mode == "train":
            model.train()

            def step():
                sum(model(images, sizes, arch_targets).values()).backward()
        else:
            model.eval()
            busy_box_predictor(model)

            def step():
                with torch.inference_mode():
                    detections = model(images, sizes)
                paste_detections(detections, [1.0] * args.batch, sizes)

        step()  # warm-up: lazily built state is not part of a step
        row_json = {"name": f"vitdense_{row}", "batch": args.batch, "device": device.type}
        if device.type == "cuda":
            with counting_cuda_syncs() as counts:
                step()
            print(json.dumps({**row_json, "host_syncs": sum(counts.values())}), flush=True)
        else:
            with as_on_cuda(), counting_host_syncs() as counter:
                step()
            counts = counter.counts
            row_json.update(host_syncs=sum(counts.values()), operations=counter.operations)
            print(json.dumps(row_json), flush=True)
        for where, count in counts.most_common(args.top):
            print(f"  {count:5d}  {where}")


if __name__ == "__main__":
    main()
