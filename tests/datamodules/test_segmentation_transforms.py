"""Tests for vitdense.datamodules.segmentation_transforms: alignment, padding, cat_max_ratio, eval size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitdense.datamodules import (
    PhotoMetricDistortion,
    SegmentationEvalTransform,
    SegmentationTrainTransform,
    rescale_size,
)

IGNORE = 255
# One colour per label (far apart, no channel 0 so padding is recognisable); ignored pixels are grey.
PALETTE = np.array(
    [[230, 30, 30], [30, 230, 30], [30, 30, 230], [230, 230, 30], [230, 30, 230], [30, 230, 230]], np.uint8
)
GREY = np.array([128, 128, 128], np.uint8)


def _scene(seed: int, h: int = 150, w: int = 230, block: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """A blocky random label map with some ignored blocks, and an image whose colour encodes the label."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, len(PALETTE), (-(-h // block), -(-w // block)))
    blocks[rng.random(blocks.shape) < 0.1] = IGNORE
    label = np.kron(blocks, np.ones((block, block), np.int64))[:h, :w].astype(np.uint8)
    image = np.where((label == IGNORE)[..., None], GREY, PALETTE[np.minimum(label, len(PALETTE) - 1)])
    return np.ascontiguousarray(image), label


def _decode(image: np.ndarray) -> np.ndarray:
    """Label of the nearest palette colour (grey: ``IGNORE``) of each pixel of an ``(H, W, 3)`` image."""
    colours = np.concatenate([PALETTE, GREY[None]]).astype(np.float32)
    nearest = np.linalg.norm(image[:, :, None, :].astype(np.float32) - colours, axis=-1).argmin(-1)
    return np.where(nearest == len(PALETTE), IGNORE, nearest)


def _content_rect(pad: np.ndarray) -> tuple[int, int]:
    """``(h, w)`` of the top-left content rectangle; asserts that ``pad`` is exactly its complement."""
    rows, cols = np.flatnonzero((~pad).any(1)), np.flatnonzero((~pad).any(0))
    vh, vw = int(rows[-1]) + 1, int(cols[-1]) + 1
    assert not pad[:vh, :vw].any(), "padding inside the content region"
    assert pad[vh:].all() and pad[:, vw:].all(), "padding is not bottom/right"
    return vh, vw


@pytest.mark.parametrize("photometric", [False, True])
def test_train_transform_keeps_image_and_label_aligned(photometric: bool) -> None:
    crop = 112
    transform = SegmentationTrainTransform(
        crop_size=crop, scale=(300, 200), ratio_range=(0.5, 2.0), photometric=photometric
    )
    padded_some = False
    for seed in range(40):
        image, label = _scene(seed)
        out_image, out_label = transform(image, label, seed=seed)
        assert out_image.shape == (3, crop, crop) and out_image.dtype == torch.uint8
        assert out_label.shape == (crop, crop) and out_label.dtype == torch.int64
        img = out_image.permute(1, 2, 0).numpy()
        lab = out_label.numpy()
        assert set(np.unique(lab)) <= {*range(len(PALETTE)), IGNORE}
        pad = (img == 0).all(-1) & (lab == IGNORE)
        vh, vw = _content_rect(pad)
        assert not (img[:vh, :vw] == 0).all(-1).any() or photometric, "content pixels are never black"
        padded_some |= (vh, vw) != (crop, crop)
        if photometric:
            continue  # colours are distorted; padding (checked above) must still be exact
        # Pixels whose 3x3 label neighbourhood is uniform (crop border excluded: the bilinear resize blends
        # in pixels beyond it) are away from blending at boundaries.
        window = np.lib.stride_tricks.sliding_window_view(np.pad(lab, 1, constant_values=-1), (3, 3))
        uniform = (window == lab[..., None, None]).all((-1, -2)) & ~pad
        assert (uniform & (lab != IGNORE)).mean() > 0.3, seed
        decoded = _decode(img)
        assert (decoded[uniform] == lab[uniform]).all(), seed
    assert padded_some, "ratios below ~0.75 must give crops smaller than the canvas"


def _share(label: np.ndarray) -> tuple[int, float]:
    values = label[label != IGNORE]
    counts = np.bincount(values)
    counts = counts[counts > 0]
    return len(counts), float(counts.max() / counts.sum())


def test_cat_max_ratio_is_honoured_when_possible() -> None:
    # Left half one class, right half thin stripes of three: about 60 % of windows are acceptable.
    label = np.zeros((200, 400), np.uint8)
    label[:, 200:] = 1 + (np.arange(200) // 10 % 3)
    image = PALETTE[label]
    kwargs = {"crop_size": 100, "scale": (400, 200), "ratio_range": (1.0, 1.0), "photometric": False}
    strict = SegmentationTrainTransform(cat_max_ratio=0.75, **kwargs)
    loose = SegmentationTrainTransform(cat_max_ratio=1.0, **kwargs)
    violations = []
    for seed in range(50):
        _, out = strict(image, label, seed=seed)
        n, share = _share(out.numpy())
        assert n > 1 and share < 0.75, (seed, n, share)
        _, out = loose(image, label, seed=seed)
        n, share = _share(out.numpy())
        violations.append(n == 1 or share >= 0.75)
    assert any(violations), "without the check some crops are dominated by one class"


def test_random_state_follows_the_given_seed() -> None:
    # Each training sample is handed its own seed; the same seed draws the same augmentation.
    image, label = _scene(0)
    a = SegmentationTrainTransform(crop_size=112, scale=(300, 200))(image, label, seed=1)
    transform = SegmentationTrainTransform(crop_size=112, scale=(300, 200))
    transform(image, label)  # the transform's own stream moves on; a seed does not depend on it
    b = transform(image, label, seed=1)
    c = transform(image, label, seed=2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not (torch.equal(a[0], c[0]) and torch.equal(a[1], c[1]))


def test_wide_labels_are_padded_with_a_large_ignore_index() -> None:
    image, label = _scene(3)
    label = np.where(label == IGNORE, 300, label).astype(np.int32)
    transform = SegmentationTrainTransform(
        crop_size=224, scale=(150, 100), ignore_index=300, photometric=False
    )
    _, out = transform(image, label, seed=0)
    assert out.dtype == torch.int64 and out.shape == (224, 224)
    assert (out[-1] == 300).all(), "a crop larger than the resized image is padded with ignore_index"


def test_photometric_distortion_changes_colours_only() -> None:
    image, _ = _scene(1)
    distort = PhotoMetricDistortion(p=1.0)
    changed = 0
    for seed in range(10):
        distort.set_random_seed(seed)
        out = distort(image=image)["image"]
        assert out.shape == image.shape and out.dtype == np.uint8
        changed += not np.array_equal(out, image)
    assert changed >= 5


@pytest.mark.parametrize(
    ("hw", "expected"),
    [
        ((512, 683), (512, 683)),  # a typical ADE20K image: factor 1
        ((300, 2000), (307, 2048)),  # long side limits: 2048 / 2000
        ((1000, 500), (1024, 512)),  # short side limits: 512 / 500
        ((100, 70), (731, 512)),  # small images are enlarged: 512 / 70
    ],
)
def test_eval_size_follows_the_fit_rule(hw: tuple[int, int], expected: tuple[int, int]) -> None:
    h, w = hw
    factor = min(2048 / max(h, w), 512 / min(h, w))
    assert expected == (int(h * factor + 0.5), int(w * factor + 0.5))
    assert rescale_size(h, w, (2048, 512)) == expected
    out = SegmentationEvalTransform((2048, 512))(np.full((h, w, 3), 77, np.uint8))
    assert out.shape == (3, *expected) and out.dtype == torch.uint8
    assert (out == 77).all()
