"""torch.export's shape rule for torchvision's ``nms``, replaced only while the kit exports."""

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

__all__ = ["nms_keeps_any_count"]


def _nms_fake(dets: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Shape of ``torchvision.ops.nms`` under tracing: (k,) int64 indices with k >= 0."""
    if dets.dim() != 2 or dets.shape[1] != 4 or scores.dim() != 1:
        raise ValueError(f"nms takes boxes (N, 4) and scores (N,), got {dets.shape} and {scores.shape}")
    return dets.new_empty(torch.library.get_ctx().new_dynamic_size(), dtype=torch.int64)


@contextlib.contextmanager
def nms_keeps_any_count() -> Iterator[None]:
    """While active, tracing ``torchvision.ops.nms`` gives a kept count of 0 or more.

    torchvision's own fake kernel makes the count with ``create_unbacked_symint()`` and so with that
    function's default lower bound of 2: every exported program would assert at run time that each NMS kept
    at least two boxes, and fail on an image with one detection or none. Eager ``nms`` is unaffected; only
    tracing runs fake kernels. On exit, also after an error, torchvision's kernel is the one in force again.
    """
    library = torch.library.Library("torchvision", "FRAGMENT")
    try:
        torch.library.register_fake("torchvision::nms", _nms_fake, lib=library)
        yield
    finally:
        # A Library undoes its registrations when it is freed; this name is its only reference.
        del library
