"""Training (large-scale jitter) and evaluation transforms for detection samples.

Both transforms take an RGB ``uint8`` HWC numpy image in the original-image frame and return a fixed
``S x S`` canvas with the content anchored top-left and zero padding bottom/right, so every batch has the
same shape and the valid region of a sample is ``[0, image_size[0]) x [0, image_size[1])``.

Boxes are ``float32`` ``(N, 4)`` ``[x1, y1, x2, y2]`` in absolute pixels (pixel ``i`` spans ``[i, i + 1)``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from albumentations.core.transforms_interface import BaseTransformInitSchema  # noqa: E402
from pydantic import Field  # noqa: E402

from vitdense.datamodules.instance_masks import InstanceMasks  # noqa: E402

__all__ = ["EvalTransform", "LargeScaleJitter", "TrainTransform", "TransformOutput", "boxes_from_masks"]


@dataclass
class TransformOutput:
    """One transformed sample.

    Attributes:
        image: ``uint8`` tensor ``(3, S, S)``, RGB, content top-left, zero padding bottom/right.
        boxes: ``float32`` tensor ``(N, 4)``, xyxy absolute pixels in the canvas frame.
        labels: ``int64`` tensor ``(N,)`` with the labels of the surviving instances.
        masks: ``uint8`` tensor ``(N, S, S)`` in {0, 1}, or None when no masks were given.
        scale: canvas coords = original coords * scale (exact for eval, the sampled factor for train).
        image_size: ``(h, w)`` of the valid, non-padding region inside the canvas.
    """

    image: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor | None
    scale: float
    image_size: tuple[int, int]


def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """Tight boxes of binary masks.

    Args:
        masks: ``(N, H, W)`` array, nonzero = foreground.

    Returns:
        ``float32`` ``(N, 4)`` xyxy with exclusive max (a one-pixel mask at (y, x) gives
        ``[x, y, x + 1, y + 1]``); all zeros for an empty mask.
    """
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for i, mask in enumerate(masks):
        x, y, w, h = _nonzero_rect(mask)
        boxes[i] = (x, y, x + w, y + h)
    return boxes


def _nonzero_rect(mask: np.ndarray) -> tuple[int, int, int, int]:
    """``(x, y, w, h)`` of the nonzero pixels of a 2-D mask; all zeros when empty."""
    # cv2.boundingRect on a uint8 image is ~10x faster than numpy any() reductions.
    return cv2.boundingRect(np.ascontiguousarray(mask, dtype=np.uint8))


def _to_chw_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def _pad_bottom_right(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    if h == size and w == size:
        return image
    canvas = np.zeros((size, size, *image.shape[2:]), dtype=image.dtype)
    canvas[:h, :w] = image
    return canvas


class LargeScaleJitter(A.DualTransform):
    """ViTDet large-scale jitter: scale to fit ``size`` x a random factor, crop at random, pad bottom/right.

    The image is scaled by ``r = size / max(h, w) * U(min_scale, max_scale)`` (aspect kept), a random
    ``size x size`` window of the scaled image is kept when it is larger, and the result is zero padded
    bottom/right to ``size x size``. The image is resized (INTER_AREA down, bilinear warp of the output
    window up); masks are mapped nearest-neighbour, each only over its own output region, since resizing
    ~20 full masks to 2x before cropping would dominate the cost of a sample.

    Targets: image, mask(s), bboxes. Boxes that leave the window are dropped by the enclosing
    ``A.Compose``; its masks are not (albumentations 2.0.8), so :class:`TrainTransform` maps instance masks
    itself with :meth:`warp_instance_masks`.
    """

    class InitSchema(BaseTransformInitSchema):
        size: int = Field(gt=0)
        min_scale: float = Field(gt=0)
        max_scale: float = Field(gt=0)

    def __init__(self, size: int, min_scale: float = 0.1, max_scale: float = 2.0, p: float = 1.0) -> None:
        super().__init__(p=p)
        if min_scale > max_scale:
            raise ValueError(f"LargeScaleJitter: min_scale={min_scale} > max_scale={max_scale}; swap them")
        self.size = size
        self.min_scale = min_scale
        self.max_scale = max_scale

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("size", "min_scale", "max_scale")

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        r = self.size / max(h, w) * self.py_random.uniform(self.min_scale, self.max_scale)
        new_h, new_w = max(1, round(h * r)), max(1, round(w * r))
        # Per-axis factors of the integer-sized resize, so image, masks and boxes use the same mapping.
        sy, sx = new_h / h, new_w / w
        y0 = self.py_random.randint(0, max(0, new_h - self.size))
        x0 = self.py_random.randint(0, max(0, new_w - self.size))
        valid = (min(self.size, new_h - y0), min(self.size, new_w - x0))
        # Pixel-centre convention (as cv2.resize): out + 0.5 = (in + 0.5) * s - offset.
        matrix = np.array([[sx, 0.0, 0.5 * sx - 0.5 - x0], [0.0, sy, 0.5 * sy - 0.5 - y0]], dtype=np.float64)
        return {
            "scale": r,
            "sx": sx,
            "sy": sy,
            "offset": (x0, y0),
            "resized_shape": (new_h, new_w),
            "valid": valid,
            "matrix": matrix,
        }

    def apply(
        self,
        img: np.ndarray,
        matrix: np.ndarray,
        offset: tuple[int, int],
        resized_shape: tuple[int, int],
        valid: tuple[int, int],
        **params: Any,
    ) -> np.ndarray:
        new_h, new_w = resized_shape
        vh, vw = valid
        if new_h < img.shape[0] or new_w < img.shape[1]:
            # Downscaling: INTER_AREA avoids aliasing; the resized image is no larger than the input.
            x0, y0 = offset
            resized = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_AREA)
            out = _pad_bottom_right(resized[y0 : y0 + vh, x0 : x0 + vw], self.size)
        else:
            # Upscaling: warp only the output window; replicate then zero so edge pixels are not darkened.
            out = cv2.warpAffine(
                img, matrix, (self.size, self.size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
            )
            out[vh:] = 0
            out[:, vw:] = 0
        return out

    def _warp_mask(
        self,
        mask: np.ndarray,
        sx: float,
        sy: float,
        offset: tuple[int, int],
        box: tuple[int, int, int, int],
        origin: tuple[int, int] = (0, 0),
    ) -> np.ndarray:
        """Nearest-neighbour scale + crop of ``mask`` onto the output pixels ``box = (u0, v0, u1, v1)``.

        ``mask`` covers the input pixels from ``origin = (x, y)`` on (zero elsewhere). Output pixel ``u``
        takes input pixel ``floor((u + 0.5 + x0) / sx)`` (the pixel containing its centre), computed exactly
        in numpy: ``cv2.warpAffine``'s fixed-point maths rounds ties differently depending on the output
        window, which would make a windowed warp differ from a full one.
        """
        u0, v0, u1, v1 = box
        x0, y0 = offset
        cols = np.floor((np.arange(u0, u1) + 0.5 + x0) / sx).astype(np.intp) - origin[0]
        rows = np.floor((np.arange(v0, v1) + 0.5 + y0) / sy).astype(np.intp) - origin[1]
        inside = (cols >= 0) & (cols < mask.shape[1])
        out = mask[np.ix_(rows.clip(0, mask.shape[0] - 1), cols.clip(0, mask.shape[1] - 1))]
        out[:, ~inside] = 0
        out[(rows < 0) | (rows >= mask.shape[0])] = 0
        return out

    def apply_to_mask(
        self,
        mask: np.ndarray,
        sx: float,
        sy: float,
        offset: tuple[int, int],
        valid: tuple[int, int],
        **params: Any,
    ) -> np.ndarray:
        out = np.zeros((self.size, self.size), dtype=mask.dtype)
        vh, vw = valid
        out[:vh, :vw] = self._warp_mask(mask, sx, sy, offset, (0, 0, vw, vh))
        return out

    def apply_to_masks(self, masks: np.ndarray, **params: Any) -> np.ndarray:
        return self.warp_instance_masks(InstanceMasks.from_dense(masks), **params)

    def warp_instance_masks(
        self,
        masks: InstanceMasks,
        sx: float,
        sy: float,
        offset: tuple[int, int],
        valid: tuple[int, int],
        **params: Any,
    ) -> np.ndarray:
        """``(N, size, size)`` in the masks' dtype: each instance's region mapped as :meth:`apply_to_mask`
        maps a whole mask, with the parameters a call drew (see :meth:`TrainTransform.augment`).

        Instance masks are mostly empty: each region is mapped only onto its own output pixels (+1 px
        margin), ~10x faster than mapping every mask over the whole canvas, with an identical result, and
        the input never needs a full-resolution frame per instance.
        """
        out = np.zeros((len(masks), self.size, self.size), dtype=masks.dtype)
        vh, vw = valid
        x0, y0 = offset
        for i, (crop, (x, y)) in enumerate(zip(masks.crops, masks.origins.tolist(), strict=True)):
            h, w = crop.shape
            if w == 0 or h == 0:
                continue
            u0 = max(0, int(np.floor(x * sx - x0)) - 1)
            u1 = min(vw, int(np.ceil((x + w) * sx - x0)) + 1)
            v0 = max(0, int(np.floor(y * sy - y0)) - 1)
            v1 = min(vh, int(np.ceil((y + h) * sy - y0)) + 1)
            if u1 > u0 and v1 > v0:
                out[i, v0:v1, u0:u1] = self._warp_mask(crop, sx, sy, offset, (u0, v0, u1, v1), (x, y))
        return out

    def apply_to_bboxes(
        self, bboxes: np.ndarray, sx: float, sy: float, offset: tuple[int, int], **params: Any
    ) -> np.ndarray:
        # Inside A.Compose boxes are normalised xyxy (+ label columns); out-of-window ones are clipped or
        # dropped by the BboxProcessor afterwards.
        if not bboxes.size:
            return bboxes
        h, w = params["shape"][:2]
        x0, y0 = offset
        out = bboxes.copy()
        out[:, [0, 2]] = (bboxes[:, [0, 2]] * w * sx - x0) / self.size
        out[:, [1, 3]] = (bboxes[:, [1, 3]] * h * sy - y0) / self.size
        return out

    def apply_to_keypoints(self, keypoints: np.ndarray, **params: Any) -> np.ndarray:
        raise NotImplementedError("LargeScaleJitter does not support keypoints")


class TrainTransform:
    """Training augmentation: horizontal flip + ViTDet large-scale jitter to an ``S x S`` canvas.

    Albumentations 2.0.8 drops boxes that leave the crop but keeps all masks, and returns label fields as
    floats; an instance index is carried as a second label field to select the surviving instances, and
    labels are cast back to ``int64``. Masks are not given to albumentations: the surviving instances'
    regions (:class:`InstanceMasks`) are flipped and mapped with the parameters it drew. With masks, boxes
    are recomputed as the tight box of the cropped mask (ViTDet's ``recompute_boxes``), so a truncated
    non-convex object gets a box that matches what is visible. Instances whose box or mask is under 1 px
    are dropped, and so are zero-width or zero-height input boxes.

    Randomness is told, not taken from a global state: a call with a ``seed`` draws the augmentation of that
    seed (the training DataLoader hands every sample its own, see
    :class:`~vitdense.datamodules.resumable.SeededSamples`); a call without one goes on with the
    transform's own random stream, seeded by ``seed`` at construction.
    """

    def __init__(
        self,
        size: int,
        min_scale: float = 0.1,
        max_scale: float = 2.0,
        flip_prob: float = 0.5,
        seed: int | None = None,
    ) -> None:
        self.size = size
        self.jitter = LargeScaleJitter(size, min_scale=min_scale, max_scale=max_scale)
        # filter_invalid_bboxes: a box with positive width in the file (float64) can be zero-width in float32;
        # albumentations would raise on it, so such boxes are dropped like any other box under 1 px.
        bbox_params = A.BboxParams(
            format="pascal_voc",
            label_fields=["labels", "instance_ids"],
            clip=True,
            filter_invalid_bboxes=True,
        )
        self.flip = A.HorizontalFlip(p=flip_prob)
        # save_applied_params: the result names the transforms applied and their parameters, which the
        # masks, mapped outside the Compose, follow.
        self.compose = A.Compose(
            [self.flip, self.jitter], bbox_params=bbox_params, seed=seed, save_applied_params=True
        )

    def augment(
        self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, seed: int | None = None
    ) -> tuple[dict[str, Any], bool, dict[str, Any]]:
        """Flip and jitter the image and boxes: albumentations' result (``image``, ``bboxes`` and the label
        fields ``labels``, ``instance_ids``), whether it flipped, and the jitter's parameters (see
        :meth:`LargeScaleJitter.get_params_dependent_on_data`). Arguments as :meth:`__call__`."""
        if seed is not None:
            self.compose.set_random_seed(seed % 2**32)
        n = len(boxes)
        result = self.compose(
            image=image,
            bboxes=np.asarray(boxes, dtype=np.float32).reshape(n, 4),
            labels=np.asarray(labels, dtype=np.int64).reshape(n),
            instance_ids=np.arange(n, dtype=np.int64),
        )
        applied = dict(result["applied_transforms"])
        return result, type(self.flip).__name__ in applied, applied[type(self.jitter).__name__]

    def __call__(
        self,
        image: np.ndarray,
        boxes: np.ndarray,
        labels: np.ndarray,
        masks: InstanceMasks | np.ndarray | None = None,
        seed: int | None = None,
    ) -> TransformOutput:
        """Augment one sample.

        Args:
            image: ``uint8`` ``(H, W, 3)`` RGB, original frame.
            boxes: ``float32`` ``(N, 4)`` xyxy absolute pixels, inside ``[0, W] x [0, H]``.
            labels: integer ``(N,)``.
            masks: the instances' masks in the original frame (:class:`InstanceMasks`, or ``uint8``
                ``(N, H, W)`` in {0, 1}), or None for box-only training.
            seed: draw the augmentation of this seed; None: go on with the transform's own random stream.

        Returns:
            The augmented sample; ``masks`` is ``(N', S, S)`` when masks were given.
        """
        n = len(boxes)
        result, flipped, params = self.augment(image, boxes, labels, seed)
        keep = np.asarray(result["instance_ids"], dtype=np.float64).round().astype(np.int64)
        out_labels = np.asarray(labels, dtype=np.int64).reshape(n)[keep]
        out_boxes = np.asarray(result["bboxes"], dtype=np.float32).reshape(-1, 4)
        out_masks: np.ndarray | None = None
        if masks is not None:
            if not isinstance(masks, InstanceMasks):
                masks = InstanceMasks.from_dense(np.asarray(masks).reshape(n, *image.shape[:2]))
            masks = masks.select(keep)
            if flipped:
                masks = masks.flip_horizontal()
            out_masks = self.jitter.warp_instance_masks(masks, **params)
            out_boxes = boxes_from_masks(out_masks)
        vh, vw = params["valid"]
        out_boxes[:, [0, 2]] = out_boxes[:, [0, 2]].clip(0, vw)
        out_boxes[:, [1, 3]] = out_boxes[:, [1, 3]].clip(0, vh)
        ok = ((out_boxes[:, 2] - out_boxes[:, 0]) >= 1) & ((out_boxes[:, 3] - out_boxes[:, 1]) >= 1)
        return TransformOutput(
            image=_to_chw_tensor(result["image"]),
            boxes=torch.from_numpy(out_boxes[ok]),
            labels=torch.from_numpy(out_labels[ok]),
            masks=None if out_masks is None else torch.from_numpy(np.ascontiguousarray(out_masks[ok])),
            scale=float(params["scale"]),
            image_size=(int(vh), int(vw)),
        )


class EvalTransform:
    """Evaluation transform: resize the longest side to ``S`` (aspect kept), pad bottom/right to ``S x S``.

    ``scale = S / max(h, w)`` exactly, along both axes: pixel centres map as ``(x + 0.5) * scale - 0.5``
    (cv2's convention), so ``boxes * scale`` lie on the resized objects and ``canvas / scale`` maps back
    exactly. The valid region is ``(round(h * scale), round(w * scale))`` (its last row or column may be up
    to half a pixel past the scaled image, filled from the edge).
    """

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(
        self,
        image: np.ndarray,
        boxes: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        masks: InstanceMasks | np.ndarray | None = None,
        seed: int | None = None,
    ) -> TransformOutput:
        """Resize and pad one image (and its targets).

        Args:
            image: ``uint8`` ``(H, W, 3)`` RGB, original frame.
            boxes: ``float32`` ``(N, 4)`` xyxy absolute pixels in the original frame, or None.
            labels: integer ``(N,)``, passed through (as ``int64``), or None.
            masks: :class:`InstanceMasks` or ``uint8`` ``(N, H, W)``, resized (nearest) and padded like the
                image, or None.
            seed: unused (nothing is random here); taken so that a dataset calls either transform alike.

        Returns:
            The sample in the canvas frame; boxes are exactly ``boxes * scale``.
        """
        h, w = image.shape[:2]
        scale = self.size / max(h, w)
        new_h, new_w = min(self.size, max(1, round(h * scale))), min(self.size, max(1, round(w * scale)))
        # Resizing to (new_w, new_h) would scale each axis by its rounded side (new_w / w, new_h / h), up to
        # half a canvas pixel off `scale` on the short side; fx = fy = scale keeps one factor, and cv2 then
        # gives the same (new_h, new_w). A side that rounds to 0 needs the explicit size (at least 1 pixel).
        if (new_h, new_w) != (h, w):
            interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
            if round(min(h, w) * scale) >= 1:
                image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=interp)
            else:
                image = cv2.resize(image, (new_w, new_h), interpolation=interp)
        boxes = np.zeros((0, 4), np.float32) if boxes is None else boxes
        out_boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        out_labels = np.zeros(0, np.int64) if labels is None else np.asarray(labels, np.int64).reshape(-1)
        out_masks = None
        if masks is not None:
            if isinstance(masks, InstanceMasks):
                masks = masks.to_dense()
            out_masks = np.zeros((len(masks), self.size, self.size), dtype=np.uint8)
            # Nearest neighbour by pixel centres at `scale` (cv2's INTER_NEAREST_EXACT would use the rounded
            # sides' ratio instead, and INTER_NEAREST the pixels' corners).
            rows = np.minimum(((np.arange(new_h) + 0.5) / scale).astype(np.int64), h - 1)
            cols = np.minimum(((np.arange(new_w) + 0.5) / scale).astype(np.int64), w - 1)
            for i, mask in enumerate(masks):
                out_masks[i, :new_h, :new_w] = mask[rows[:, None], cols]
        return TransformOutput(
            image=_to_chw_tensor(_pad_bottom_right(image, self.size)),
            boxes=torch.from_numpy(out_boxes * np.float32(scale)),
            labels=torch.from_numpy(out_labels),
            masks=None if out_masks is None else torch.from_numpy(out_masks),
            scale=scale,
            image_size=(new_h, new_w),
        )
