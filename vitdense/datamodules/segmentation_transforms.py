"""Training and evaluation transforms for semantic segmentation (the mmseg ADE20K pipeline).

Training, as mmseg's ADE20K config: ``RandomResize(scale=(2048, 512), ratio_range=(0.5, 2.0),
keep_ratio=True)``, ``RandomCrop(crop_size, cat_max_ratio=0.75)``, ``RandomFlip(0.5)``,
``PhotoMetricDistortion``, then padding bottom/right to ``crop_size x crop_size`` (mmseg pads in its data
preprocessor: image with 0, label with ``ignore_index``). Evaluation resizes the image only, keeping the
aspect ratio, and leaves the label at its original resolution (mIoU is computed there).

Images are RGB ``uint8`` ``(H, W, 3)`` numpy arrays; labels are integer ``(H, W)`` class indices
``0..K-1`` or ``ignore_index`` (already mapped, see ``vitdense.datamodules.LabelMapping``).
Labels stay in a compact integer dtype (``uint8`` or ``int32``) through the pipeline and come out as
``int64`` tensors.
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from albumentations.core.transforms_interface import BaseTransformInitSchema  # noqa: E402
from pydantic import Field  # noqa: E402

__all__ = [
    "CatMaxRatioCrop",
    "PhotoMetricDistortion",
    "RandomResizeKeepRatio",
    "SegmentationEvalTransform",
    "SegmentationTrainTransform",
    "rescale_size",
]


def rescale_size(height: int, width: int, scale: tuple[int, int] | tuple[float, float]) -> tuple[int, int]:
    """Size of an image resized to fit ``scale`` with its aspect ratio kept (mmcv ``rescale_size``).

    ``factor = min(max(scale) / long side, min(scale) / short side)``; the new sides are
    ``int(side * factor + 0.5)`` (at least 1). With ``scale=(2048, 512)`` a 512 x 683 ADE20K image stays
    512 x 683 and a 300 x 2000 panorama becomes 307 x 2048.

    Args:
        height: input height.
        width: input width.
        scale: ``(long, short)`` reference in either order (only max/min are used).

    Returns:
        ``(new_height, new_width)``.
    """
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


def _resize_label(label: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    # Pixel-centre nearest neighbour, the same sampling grid as the image's bilinear resize (mmseg's
    # cv2.INTER_NEAREST is offset by half a source pixel).
    h, w = size_hw
    if label.shape[:2] == (h, w):
        return label
    return cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)


class RandomResizeKeepRatio(A.DualTransform):
    """mmseg ``RandomResize(scale, ratio_range, keep_ratio=True)``: fit ``scale x r``, ``r ~ U(ratio_range)``.

    The image is resized bilinearly, masks with pixel-centre nearest neighbour; see :func:`rescale_size`.
    """

    class InitSchema(BaseTransformInitSchema):
        scale: tuple[int, int]
        ratio_range: tuple[float, float]

    def __init__(
        self,
        scale: tuple[int, int] = (2048, 512),
        ratio_range: tuple[float, float] = (0.5, 2.0),
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        if not 0 < ratio_range[0] <= ratio_range[1]:
            raise ValueError(f"ratio_range={ratio_range}: need 0 < low <= high, e.g. (0.5, 2.0)")
        self.scale = tuple(scale)
        self.ratio_range = tuple(ratio_range)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("scale", "ratio_range")

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        ratio = self.py_random.uniform(*self.ratio_range)
        # As mmseg: the reference scale is truncated to integers before the keep-ratio fit.
        target = (int(self.scale[0] * ratio), int(self.scale[1] * ratio))
        return {"ratio": ratio, "size_hw": rescale_size(h, w, target)}

    def apply(self, img: np.ndarray, size_hw: tuple[int, int], **params: Any) -> np.ndarray:
        h, w = size_hw
        if img.shape[:2] == (h, w):
            return img
        return cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)

    def apply_to_mask(self, mask: np.ndarray, size_hw: tuple[int, int], **params: Any) -> np.ndarray:
        return _resize_label(mask, size_hw)

    def apply_to_bboxes(self, bboxes: np.ndarray, **params: Any) -> np.ndarray:
        return bboxes  # normalised coordinates do not change under a resize

    def apply_to_keypoints(self, keypoints: np.ndarray, **params: Any) -> np.ndarray:
        raise NotImplementedError("RandomResizeKeepRatio does not support keypoints")


class CatMaxRatioCrop(A.DualTransform):
    """mmseg ``RandomCrop(crop_size, cat_max_ratio)``: a random window where no class dominates.

    A ``crop_size x crop_size`` window (smaller where the image is smaller; padding comes later) is drawn
    uniformly; when ``cat_max_ratio < 1`` it is redrawn up to 10 times until the crop holds at least two
    classes and the largest covers less than ``cat_max_ratio`` of its non-ignored pixels. As in mmseg, the
    window drawn after the tenth rejection is used unchecked. The class statistics need the ``mask``
    target (the label map).
    """

    class InitSchema(BaseTransformInitSchema):
        crop_size: int = Field(gt=0)
        cat_max_ratio: float = Field(gt=0, le=1)
        ignore_index: int

    def __init__(
        self, crop_size: int, cat_max_ratio: float = 0.75, ignore_index: int = 255, p: float = 1.0
    ) -> None:
        super().__init__(p=p)
        self.crop_size = crop_size
        self.cat_max_ratio = cat_max_ratio
        self.ignore_index = ignore_index

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("crop_size", "cat_max_ratio", "ignore_index")

    @property
    def targets_as_params(self) -> list[str]:
        # Makes A.Compose fail clearly when the label map needed for the class statistics is missing.
        return ["mask"] if self.cat_max_ratio < 1 else []

    def _window(self, h: int, w: int) -> tuple[int, int, int, int]:
        y0 = self.py_random.randint(0, max(h - self.crop_size, 0))
        x0 = self.py_random.randint(0, max(w - self.crop_size, 0))
        return y0, min(y0 + self.crop_size, h), x0, min(x0 + self.crop_size, w)

    def _balanced(self, crop: np.ndarray) -> bool:
        values = crop.ravel()
        values = values[values != self.ignore_index]
        if values.size == 0:
            return False
        counts = np.bincount(values.astype(np.intp))
        counts = counts[counts > 0]
        return len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        window = self._window(h, w)
        label = data.get("mask")
        if self.cat_max_ratio < 1:
            for _ in range(10):
                y0, y1, x0, x1 = window
                if self._balanced(label[y0:y1, x0:x1]):
                    break
                window = self._window(h, w)
        return {"window": window}

    def apply(self, img: np.ndarray, window: tuple[int, int, int, int], **params: Any) -> np.ndarray:
        y0, y1, x0, x1 = window
        return np.ascontiguousarray(img[y0:y1, x0:x1])

    def apply_to_mask(self, mask: np.ndarray, window: tuple[int, int, int, int], **params: Any) -> np.ndarray:
        y0, y1, x0, x1 = window
        return np.ascontiguousarray(mask[y0:y1, x0:x1])

    def apply_to_bboxes(self, bboxes: np.ndarray, **params: Any) -> np.ndarray:
        raise NotImplementedError("CatMaxRatioCrop does not support boxes")

    def apply_to_keypoints(self, keypoints: np.ndarray, **params: Any) -> np.ndarray:
        raise NotImplementedError("CatMaxRatioCrop does not support keypoints")


class PhotoMetricDistortion(A.ImageOnlyTransform):
    """mmseg ``PhotoMetricDistortion``, step for step.

    Each step applies with probability 0.5: brightness ``+ U(-32, 32)``; contrast ``x U(0.5, 1.5)`` (before
    or after the colour steps, at random); saturation ``S x U(0.5, 1.5)``; hue ``H + randint(-18, 18)``
    (OpenCV hue units, mod 180). Each step clips and truncates to ``uint8`` as mmseg does. Written out
    because albumentations' look-alikes differ: ``ColorJitter``'s brightness is multiplicative and its
    contrast blends with the mean, and ``HueSaturationValue`` shifts saturation additively.
    """

    class InitSchema(BaseTransformInitSchema):
        brightness_delta: int = Field(ge=0)
        contrast_range: tuple[float, float]
        saturation_range: tuple[float, float]
        hue_delta: int = Field(ge=0)

    def __init__(
        self,
        brightness_delta: int = 32,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        hue_delta: int = 18,
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        self.brightness_delta = brightness_delta
        self.contrast_range = tuple(contrast_range)
        self.saturation_range = tuple(saturation_range)
        self.hue_delta = hue_delta

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("brightness_delta", "contrast_range", "saturation_range", "hue_delta")

    def get_params(self) -> dict[str, Any]:
        r = self.py_random
        return {
            "beta": r.uniform(-self.brightness_delta, self.brightness_delta) if r.randint(0, 1) else None,
            "contrast_first": bool(r.randint(0, 1)),
            "alpha": r.uniform(*self.contrast_range) if r.randint(0, 1) else None,
            "saturation": r.uniform(*self.saturation_range) if r.randint(0, 1) else None,
            "hue": r.randint(-self.hue_delta, self.hue_delta) if r.randint(0, 1) else None,
        }

    @staticmethod
    def _convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
        return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    def apply(
        self,
        img: np.ndarray,
        beta: float | None,
        contrast_first: bool,
        alpha: float | None,
        saturation: float | None,
        hue: int | None,
        **params: Any,
    ) -> np.ndarray:
        if beta is not None:
            img = self._convert(img, beta=beta)
        if contrast_first and alpha is not None:
            img = self._convert(img, alpha=alpha)
        if saturation is not None or hue is not None:
            hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
            if saturation is not None:
                hsv[..., 1] = self._convert(hsv[..., 1], alpha=saturation)
            if hue is not None:
                hsv[..., 0] = (hsv[..., 0].astype(np.int32) + hue) % 180
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        if not contrast_first and alpha is not None:
            img = self._convert(img, alpha=alpha)
        return img


class SegmentationTrainTransform:
    """Training augmentation: random resize, cat-max-ratio crop, flip, photometric distortion, pad.

    The output is always ``crop_size x crop_size``: content top-left, image padding 0 and label padding
    ``ignore_index`` bottom/right (where the resized image is smaller than the crop).

    A call with a ``seed`` draws the augmentation of that seed (the training DataLoader hands every sample
    its own); a call without one goes on with the transform's own random stream, seeded by ``seed``.

    Args:
        crop_size: output side ``C``.
        scale: ``(long, short)`` reference size of the random resize (mmseg ADE20K: ``(2048, 512)``).
        ratio_range: range of the random factor applied to ``scale``.
        cat_max_ratio: largest share one class may take of a crop (1 disables the check).
        ignore_index: label of ignored pixels, also used for padding.
        flip_prob: horizontal flip probability.
        photometric: apply :class:`PhotoMetricDistortion` (off in alignment tests).
        seed: seed of the transform's own random stream (None: albumentations draws one).
    """

    def __init__(
        self,
        crop_size: int = 518,
        scale: tuple[int, int] = (2048, 512),
        ratio_range: tuple[float, float] = (0.5, 2.0),
        cat_max_ratio: float = 0.75,
        ignore_index: int = 255,
        flip_prob: float = 0.5,
        photometric: bool = True,
        seed: int | None = None,
    ) -> None:
        self.crop_size = crop_size
        self.ignore_index = ignore_index
        steps: list[A.BasicTransform] = [
            RandomResizeKeepRatio(scale, ratio_range),
            CatMaxRatioCrop(crop_size, cat_max_ratio, ignore_index),
            A.HorizontalFlip(p=flip_prob),
        ]
        if photometric:
            steps.append(PhotoMetricDistortion())
        # Padding last, so flips and colour changes never touch it.
        steps.append(
            A.PadIfNeeded(
                crop_size,
                crop_size,
                position="top_left",
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=ignore_index,
            )
        )
        self.compose = A.Compose(steps, seed=seed, save_applied_params=True)

    def augment(self, image: np.ndarray, label: np.ndarray, seed: int | None = None) -> dict[str, Any]:
        """Albumentations' result: ``image``, ``mask`` (the label) and ``applied_transforms``, the
        ``(name, parameters)`` of each step applied. Arguments as :meth:`__call__`."""
        if image.shape[:2] != label.shape[:2]:
            raise ValueError(f"image is {image.shape[:2]}, label {label.shape[:2]} (h, w); they must match")
        if seed is not None:
            self.compose.set_random_seed(seed % 2**32)
        return self.compose(image=image, mask=label)

    def __call__(
        self, image: np.ndarray, label: np.ndarray, seed: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment one sample.

        Args:
            image: ``uint8`` ``(H, W, 3)`` RGB.
            label: integer ``(H, W)`` (``uint8``, ``uint16`` or ``int32``), class indices or ``ignore_index``.
            seed: draw the augmentation of this seed; None: go on with the transform's own random stream.

        Returns:
            ``image``: ``uint8`` ``(3, C, C)``; ``label``: ``int64`` ``(C, C)``.
        """
        result = self.augment(image, label, seed)
        out_image = torch.from_numpy(np.ascontiguousarray(result["image"].transpose(2, 0, 1)))
        out_label = torch.from_numpy(np.ascontiguousarray(result["mask"]).astype(np.int64))
        return out_image, out_label


class SegmentationEvalTransform:
    """Evaluation transform: resize the image to fit ``scale`` keeping its aspect ratio (bilinear).

    mmseg's ``Resize(scale=(2048, 512), keep_ratio=True)``; the result is not padded and its sides are not
    multiples of 14 (batch collation pads). The label is not resized: metrics are computed at the
    original resolution.

    Args:
        scale: ``(long, short)`` reference; see :func:`rescale_size`.
    """

    def __init__(self, scale: tuple[int, int] = (2048, 512)) -> None:
        self.scale = tuple(scale)

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        """Resize one image.

        Args:
            image: ``uint8`` ``(H0, W0, 3)`` RGB.

        Returns:
            ``uint8`` ``(3, h, w)`` with ``(h, w) = rescale_size(H0, W0, scale)``.
        """
        h, w = rescale_size(image.shape[0], image.shape[1], self.scale)
        if (h, w) != image.shape[:2]:
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
