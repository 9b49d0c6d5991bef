"""Running a :class:`~vitdense.heads.segmenter.Segmenter` over images of any size.

Each helper crops each image's valid region from the model's canvas-size logits and resizes them to the
original image, either from one pass over the padded batch (:func:`whole_inference`) or from overlapping
crop-size windows (:func:`slide_inference`, mmseg's "slide" mode); :func:`multi_scale_flip_inference` averages
either over resized and mirrored copies of the images (mmseg's aug-test).
"""

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from vitdense.heads.segmenter import Segmenter, padded_size

__all__ = [
    "SingleScaleInference",
    "multi_scale_flip_inference",
    "slide_inference",
    "sliding_windows",
    "whole_inference",
]


def _check_batch(
    images: Tensor, image_sizes: Sequence[tuple[int, int]], orig_sizes: Sequence[tuple[int, int]]
) -> None:
    if images.ndim != 4:
        raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
    b, _, h, w = images.shape
    if not len(image_sizes) == len(orig_sizes) == b:
        raise ValueError(
            f"got {len(image_sizes)} image_sizes and {len(orig_sizes)} orig_sizes for {b} images"
        )
    for i, (ih, iw) in enumerate(image_sizes):
        if not (0 < ih <= h and 0 < iw <= w):
            raise ValueError(f"image_sizes[{i}] = {(ih, iw)} is empty or exceeds the {h}x{w} canvas")


def _to_original(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """(K, h, w) valid-region logits -> (K, H0, W0) at the original image's size."""
    size = (int(size[0]), int(size[1]))
    if logits.shape[-2:] == size:
        return logits
    return F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]


@torch.no_grad()
def whole_inference(
    model: Segmenter,
    images: Tensor,
    image_sizes: Sequence[tuple[int, int]],
    orig_sizes: Sequence[tuple[int, int]],
) -> list[Tensor]:
    """Logits of every image at its original resolution, each computed on its own valid region.

    Attention spans the whole input, so a smaller image zero-padded to its batch-mates' size would get other
    logits than alone: every image is cropped to its valid region, padded to ``model.size_divisibility``, and
    images of equal padded size share one forward pass. Results do not depend on the batch, but for
    floating-point rounding: matrix products over another number of images may round differently, which
    flips a pixel between two near-tied classes now and then (1 pixel in 3.4M was seen on CPU between
    evaluation batch sizes 1 and 4).

    Args:
        model: a :class:`Segmenter` in eval mode.
        images: (B, 3, H, W) canvas, uint8 or float in [0, 1], zero-padded bottom/right.
        image_sizes: per image, (h, w) of the valid region at the canvas' top-left.
        orig_sizes: per image, (H0, W0) of the original image the valid region was resized from.

    Returns:
        Per image, float32 (K, H0, W0) logits (argmax over K gives the label map).
    """
    _check_batch(images, image_sizes, orig_sizes)
    divisor = model.size_divisibility
    groups: dict[tuple[int, int], list[int]] = {}
    for index, (h, w) in enumerate(image_sizes):
        padded = (padded_size(int(h), divisor), padded_size(int(w), divisor))
        groups.setdefault(padded, []).append(index)
    outputs: list[Tensor | None] = [None] * len(image_sizes)
    for (height, width), indices in groups.items():
        crops = []
        for index in indices:
            h, w = (int(v) for v in image_sizes[index])
            crops.append(F.pad(images[index, :, :h, :w], (0, width - w, 0, height - h)))
        logits = model(torch.stack(crops))["out"].float()
        for index, image_logits in zip(indices, logits, strict=True):
            h, w = (int(v) for v in image_sizes[index])
            outputs[index] = _to_original(image_logits[:, :h, :w], orig_sizes[index])
    return outputs


def sliding_windows(height: int, width: int, crop_size: int, stride: int) -> list[tuple[int, int, int, int]]:
    """Windows of mmseg's slide inference over a ``height`` x ``width`` image.

    Starts step by ``stride``; the last window in each direction is shifted back to end at the border, and an
    image smaller than ``crop_size`` in a direction gets one window of its own length there. Every pixel is
    covered and all windows have the same size.

    Args:
        height: image height in pixels.
        width: image width in pixels.
        crop_size: window side.
        stride: step between window starts, in (0, crop_size].

    Returns:
        ``(y1, x1, y2, x2)`` windows (end exclusive), row by row.
    """
    if crop_size <= 0 or not 0 < stride <= crop_size:
        raise ValueError(f"need crop_size > 0 and 0 < stride <= crop_size, got {crop_size} and {stride}")

    def starts(length: int) -> list[int]:
        count = max(length - crop_size + stride - 1, 0) // stride + 1
        return [max(min(i * stride + crop_size, length) - crop_size, 0) for i in range(count)]

    return [
        (y1, x1, min(y1 + crop_size, height), min(x1 + crop_size, width))
        for y1 in starts(height)
        for x1 in starts(width)
    ]


@torch.no_grad()
def slide_inference(
    model: Segmenter,
    images: Tensor,
    image_sizes: Sequence[tuple[int, int]],
    orig_sizes: Sequence[tuple[int, int]],
    crop_size: int,
    stride: int,
    window_batch_size: int | None = None,
) -> list[Tensor]:
    """Logits of every image at its original resolution, averaged over overlapping windows (mmseg "slide").

    Each image's valid region is cut into ``crop_size`` windows (see :func:`sliding_windows`); windows of one
    image run as one batch, zero-padded bottom/right to a multiple of ``size_divisibility`` when the image is
    smaller than the crop. Each pixel's logits are the mean over the windows that cover it.

    Args:
        model: a :class:`Segmenter` in eval mode.
        images: (B, 3, H, W) canvas, uint8 or float in [0, 1], zero-padded bottom/right.
        image_sizes: per image, (h, w) of the valid region at the canvas' top-left.
        orig_sizes: per image, (H0, W0) of the original image the valid region was resized from.
        crop_size: window side in canvas pixels, a multiple of ``model.size_divisibility`` (e.g. 518 or 504
            for a patch-14 ViT, 504 or 560 for its pyramid); usually the training crop.
        stride: step between windows, in (0, crop_size]; mmseg uses about 2/3 of the crop.
        window_batch_size: run at most this many windows at once (None: all windows of an image), to bound
            memory on large images.

    Returns:
        Per image, float32 (K, H0, W0) logits.
    """
    _check_batch(images, image_sizes, orig_sizes)
    d = model.size_divisibility
    if crop_size <= 0 or crop_size % d:
        raise ValueError(
            f"crop_size {crop_size} must be a multiple of the model's size_divisibility {d} "
            f"(e.g. {max(padded_size(crop_size, d), d)})"
        )
    if window_batch_size is not None and window_batch_size < 1:
        raise ValueError(f"window_batch_size must be >= 1 or None, got {window_batch_size}")

    results = []
    for image, (h, w), orig in zip(images, image_sizes, orig_sizes):
        h, w = int(h), int(w)
        windows = sliding_windows(h, w, crop_size, stride)
        crop_h, crop_w = min(crop_size, h), min(crop_size, w)
        crops = torch.stack([image[:, y1:y2, x1:x2] for y1, x1, y2, x2 in windows])
        # Zero padding, like the batch canvas the model was trained on.
        crops = F.pad(crops, (0, padded_size(crop_w, d) - crop_w, 0, padded_size(crop_h, d) - crop_h))

        logits_sum: Tensor | None = None
        count = torch.zeros((1, h, w), device=images.device)
        step = window_batch_size or len(windows)
        for start in range(0, len(windows), step):
            logits = model(crops[start : start + step])["out"][..., :crop_h, :crop_w].float()
            if logits_sum is None:
                logits_sum = logits.new_zeros((logits.shape[1], h, w))
            for window_logits, (y1, x1, y2, x2) in zip(logits, windows[start : start + step]):
                logits_sum[:, y1:y2, x1:x2] += window_logits
                count[:, y1:y2, x1:x2] += 1
        assert logits_sum is not None
        results.append(_to_original(logits_sum / count, orig))
    return results


SingleScaleInference = Callable[[Tensor, Sequence[tuple[int, int]], Sequence[tuple[int, int]]], list[Tensor]]
"""``(images, image_sizes, orig_sizes) -> per-image float (K, H0, W0) logits``, as :func:`whole_inference` and
:func:`slide_inference` with their model (and window) bound, e.g. by ``functools.partial``."""


def _resized_canvas(
    images: Tensor, image_sizes: Sequence[tuple[int, int]], sizes: Sequence[tuple[int, int]]
) -> Tensor:
    """Each image's valid region resized (bilinear) to its new size, top-left on a zero canvas."""
    canvas = images.new_zeros((*images.shape[:2], max(h for h, _ in sizes), max(w for _, w in sizes)))
    for index, ((h, w), (new_h, new_w)) in enumerate(zip(image_sizes, sizes, strict=True)):
        region = images[index, :, :h, :w]
        if (new_h, new_w) != (h, w):
            source = region[None] if images.is_floating_point() else region[None].float()
            resized = F.interpolate(source, size=(new_h, new_w), mode="bilinear", align_corners=False)[0]
            # uint8 stays uint8, as an image resized by the data pipeline (mmseg: cv2 on uint8).
            region = resized if images.is_floating_point() else resized.round().to(images.dtype)
        canvas[index, :, :new_h, :new_w] = region
    return canvas


def _flipped(canvas: Tensor, sizes: Sequence[tuple[int, int]]) -> Tensor:
    """Each image's valid region mirrored left-right in place of itself; the padding stays bottom/right."""
    flipped = canvas.clone()
    for index, (h, w) in enumerate(sizes):
        flipped[index, :, :h, :w] = canvas[index, :, :h, :w].flip(-1)
    return flipped


@torch.no_grad()
def multi_scale_flip_inference(
    infer: SingleScaleInference,
    images: Tensor,
    image_sizes: Sequence[tuple[int, int]],
    orig_sizes: Sequence[tuple[int, int]],
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
) -> list[Tensor]:
    """Class probabilities of every image at its original resolution, averaged over scales and flips.

    mmseg's aug-test (``MultiScaleFlipAug`` with ``img_ratios``, behind the BEiT / MAE "ms" rows; DINOv2's
    "+ms" rows use the same mechanism with their own ratios): for each scale, each image's valid region (the
    image at the evaluation resize) is resized bilinearly by that factor (sides ``int(side * scale + 0.5)``)
    and, with ``flip``, also mirrored left-right; each pass runs ``infer`` (whole-image or sliding-window
    inference at that scale) and gets its logits resized to the original image; mirrored passes are mirrored
    back. The result is the mean of the passes' softmax probabilities, which is what mmseg averages (0.x
    ``EncoderDecoder.aug_test`` sums the softmax outputs of ``inference``, 1.x ``SegTTAModel.merge_preds``
    sums ``seg_logits.softmax``), not the mean of the logits: their argmax can differ.

    One difference from mmseg, which resizes the original image to ``scale x`` the evaluation scale: here
    the image already at the evaluation scale is resized again (the data pipeline is not re-run), so a side
    may differ by a pixel, and scales above 1 add no detail that the evaluation resize removed.

    With ``scales=(1.0,)`` and no flip this is ``softmax(infer(images, image_sizes, orig_sizes))`` exactly.

    Args:
        infer: single-scale inference with the model bound (see :data:`SingleScaleInference`).
        images: (B, 3, H, W) canvas, uint8 or float in [0, 1], zero-padded bottom/right.
        image_sizes: per image, (h, w) of the valid region at the canvas' top-left.
        orig_sizes: per image, (H0, W0) of the original image the valid region was resized from.
        scales: resize factors of the valid region (mmseg's ADE20K aug-test: 0.5, 0.75, 1.0, 1.25, 1.5,
            1.75).
        flip: also run every scale mirrored left-right (doubles the passes).

    Returns:
        Per image, float32 (K, H0, W0) class probabilities, each pixel's summing to 1 (argmax over K gives
        the label map).
    """
    _check_batch(images, image_sizes, orig_sizes)
    if not scales or min(scales) <= 0:
        raise ValueError(f"scales must be positive resize factors, e.g. [0.5, 0.75, 1.0], got {list(scales)}")
    image_sizes = [(int(h), int(w)) for h, w in image_sizes]
    totals: list[Tensor] | None = None
    passes = 0
    for scale in scales:
        sizes = [(max(int(h * scale + 0.5), 1), max(int(w * scale + 0.5), 1)) for h, w in image_sizes]
        canvas = _resized_canvas(images, image_sizes, sizes)
        for mirrored in (False, True) if flip else (False,):
            outputs = infer(_flipped(canvas, sizes) if mirrored else canvas, sizes, orig_sizes)
            probabilities = [logits.float().softmax(dim=0) for logits in outputs]
            if mirrored:
                probabilities = [image_probabilities.flip(-1) for image_probabilities in probabilities]
            if totals is None:
                totals = probabilities
            else:
                for total, image_probabilities in zip(totals, probabilities, strict=True):
                    total.add_(image_probabilities)
            passes += 1
    assert totals is not None
    return [total / passes for total in totals]
