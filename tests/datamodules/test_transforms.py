"""Tests for vitdense.datamodules.transforms: LSJ keeps boxes, labels, masks in step; eval is exact."""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from vitdense.datamodules import EvalTransform, LargeScaleJitter, TrainTransform, boxes_from_masks
from vitdense.datamodules.instance_masks import InstanceMasks

Scene = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _scene(seed: int, h: int = 300, w: int = 420, n: int = 10) -> Scene:
    """Non-overlapping ellipses and rectangles; instance i is painted grey level 20 * (i + 1), label i + 1."""
    rng = np.random.default_rng(seed)
    image = np.zeros((h, w, 3), np.uint8)
    masks = np.zeros((n, h, w), np.uint8)
    yy, xx = np.mgrid[:h, :w]
    taken = np.zeros((h, w), bool)
    for i in range(n):
        for _ in range(100):
            bh, bw = rng.integers(15, 90, 2)
            y, x = rng.integers(0, h - bh), rng.integers(0, w - bw)
            if i % 2:
                cy, cx = y + bh / 2, x + bw / 2
                m = ((yy + 0.5 - cy) / (bh / 2)) ** 2 + ((xx + 0.5 - cx) / (bw / 2)) ** 2 <= 1
            else:
                m = np.zeros((h, w), bool)
                m[y : y + bh, x : x + bw] = True
            if not (m & taken).any():
                break
        taken |= m
        masks[i] = m
        image[m] = 20 * (i + 1)
    boxes = boxes_from_masks(masks)
    return image, boxes, np.arange(1, n + 1, dtype=np.int64), masks


@pytest.mark.parametrize(("min_scale", "max_scale"), [(0.1, 2.0), (2.0, 2.0), (0.1, 0.3)])
def test_lsj_keeps_boxes_labels_masks_in_step(min_scale: float, max_scale: float) -> None:
    size = 224
    transform = TrainTransform(size, min_scale=min_scale, max_scale=max_scale)
    dropped_some = False
    checked = 0
    for seed in range(40):
        image, boxes, labels, masks = _scene(seed)
        out = transform(image, boxes, labels, masks, seed=seed)
        n = len(out.boxes)
        assert out.image.shape == (3, size, size) and out.image.dtype == torch.uint8
        assert len(out.labels) == n and out.masks is not None and len(out.masks) == n
        assert out.labels.dtype == torch.int64 and out.boxes.dtype == torch.float32
        assert out.masks.dtype == torch.uint8
        out_masks, out_image = out.masks.numpy(), out.image.numpy()
        assert out_masks.max(initial=0) <= 1
        dropped_some |= n < len(boxes)
        vh, vw = out.image_size
        assert 0 < vh <= size and 0 < vw <= size
        # Padding bottom/right is zero in the image and in every mask.
        assert not out_image[:, vh:].any() and not out_image[:, :, vw:].any()
        assert not out_masks[:, vh:].any() and not out_masks[:, :, vw:].any()
        if n == 0:
            continue
        b = out.boxes.numpy()
        assert (b[:, :2] >= 0).all() and (b[:, 2] <= vw).all() and (b[:, 3] <= vh).all()
        assert ((b[:, 2] - b[:, 0]) >= 1).all() and ((b[:, 3] - b[:, 1]) >= 1).all()
        np.testing.assert_allclose(boxes_from_masks(out_masks), b, atol=1)
        assert out_masks.any(axis=(1, 2)).all()
        # Pairing: the interior pixels of each mask show the grey level of its label's instance (edge
        # pixels are blended with the background by the resize).
        grey = out_image[0]
        for label, mask in zip(out.labels.tolist(), out_masks):
            interior = cv2.erode(mask, np.ones((3, 3), np.uint8)).astype(bool)
            if interior.sum() >= 10:
                assert abs(float(np.median(grey[interior])) - 20 * label) <= 3, (seed, label)
                checked += 1
    assert checked >= 20, "the pairing check must actually run"
    if min_scale >= 2.0:
        assert dropped_some, "heavy crops must push some instances out of the canvas"


def test_lsj_without_masks_keeps_boxes_and_labels_in_step() -> None:
    transform = TrainTransform(112, min_scale=1.5, max_scale=2.0)
    checked = 0
    for seed in range(30):
        image, boxes, labels, _ = _scene(seed)
        out = transform(image, boxes, labels, seed=seed)
        assert out.masks is None and len(out.boxes) == len(out.labels)
        assert out.labels.dtype == torch.int64
        b = out.boxes.numpy()
        vh, vw = out.image_size
        assert (b >= 0).all() and (b[:, 2] <= vw).all() and (b[:, 3] <= vh).all()
        grey = out.image[0].numpy()
        for label, box in zip(out.labels.tolist(), b.round().astype(int)):
            x1, y1, x2, y2 = box
            patch = grey[y1:y2, x1:x2]
            # A box untouched by the crop holds its whole instance, which covers >= pi/4 of it.
            if x1 > 0 and y1 > 0 and x2 < vw and y2 < vh and patch.size >= 100:
                assert (np.abs(patch.astype(int) - 20 * label) <= 3).mean() >= 0.5, (seed, label)
                checked += 1
    assert checked >= 20


def test_empty_targets() -> None:
    image = np.full((50, 80, 3), 9, np.uint8)
    no_masks = np.zeros((0, 50, 80), np.uint8)
    out = TrainTransform(56)(image, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), no_masks)
    assert out.boxes.shape == (0, 4) and out.labels.shape == (0,) and out.masks.shape == (0, 56, 56)


def test_random_state_follows_the_given_seed() -> None:
    image, boxes, labels, masks = _scene(0)
    a = TrainTransform(112)(image, boxes, labels, masks, seed=1)
    b = TrainTransform(112)(image, boxes, labels, masks, seed=1)
    c = TrainTransform(112)(image, boxes, labels, masks, seed=2)
    assert torch.equal(a.image, b.image) and torch.equal(a.boxes, b.boxes)
    assert a.scale != c.scale


def test_scale_range_is_respected() -> None:
    image, boxes, labels, masks = _scene(3, h=200, w=400)
    transform = TrainTransform(112, min_scale=0.5, max_scale=0.8)
    for seed in range(20):
        out = transform(image, boxes, labels, masks, seed=seed)
        assert 112 / 400 * 0.5 <= out.scale <= 112 / 400 * 0.8
        assert out.image_size == (round(200 * out.scale), round(400 * out.scale))


def test_roi_mask_warp_equals_full_warp() -> None:
    rng = np.random.default_rng(1)
    jitter = LargeScaleJitter(96, 0.1, 2.0)
    jitter.set_random_seed(0)
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(40, 300, 2))
        masks = np.zeros((4, h, w), np.uint8)
        for m in masks:
            y, x = rng.integers(0, h - 5), rng.integers(0, w - 5)
            m[y : y + rng.integers(1, 50), x : x + rng.integers(1, 50)] = 1
        params = jitter.get_params_dependent_on_data({"shape": (h, w)}, {})
        fast = jitter.apply_to_masks(masks, **params)
        full = np.stack([jitter.apply_to_mask(m, **params) for m in masks])
        np.testing.assert_array_equal(fast, full)


@pytest.mark.parametrize(("h", "w"), [(480, 640), (640, 480), (100, 50), (1008, 1008), (333, 1000)])
def test_eval_transform_scale_is_exact(h: int, w: int) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(1, 255, (h, w, 3), dtype=np.uint8)
    boxes = np.array([[0, 0, w, h], [10.5, 3.25, 40.0, 33.0]], np.float32)
    out = EvalTransform(224)(image, boxes, np.array([1, 2]))
    assert out.scale == 224 / max(h, w)
    assert out.image_size == (round(h * out.scale), round(w * out.scale)) and max(out.image_size) == 224
    np.testing.assert_allclose(out.boxes.numpy() / out.scale, boxes, rtol=1e-5, atol=1e-4)
    assert out.labels.tolist() == [1, 2] and out.labels.dtype == torch.int64
    vh, vw = out.image_size
    assert out.image[:, vh:].sum() == 0 and out.image[:, :, vw:].sum() == 0
    assert (out.image[:, :vh, :vw] > 0).float().mean() > 0.99


@pytest.mark.parametrize(
    ("h", "w", "size"), [(427, 640, 1008), (333, 517, 1008), (427, 640, 224), (3001, 4000, 1008)]
)
def test_eval_transform_moves_image_and_masks_by_the_scale_it_reports(h: int, w: int, size: int) -> None:
    # A bright rectangle: its intensity centroid in the canvas must be its centre * scale (pixel-centre
    # convention), on the short side too, where the rounded side would give another factor (up to 0.5 px).
    x0, y0, x1, y1 = w // 3, h // 3, w // 3 + w // 4, h // 3 + h // 4
    image = np.zeros((h, w, 3), np.uint8)
    image[y0:y1, x0:x1] = 255
    mask = (image[None, :, :, 0] > 0).astype(np.uint8)
    out = EvalTransform(size)(image, np.array([[x0, y0, x1, y1]], np.float32), np.array([1]), mask)
    weights = out.image[0].double().numpy() / 255
    for axis, (start, stop) in ((0, (y0, y1)), (1, (x0, x1))):
        profile = weights.sum(1 - axis)
        centroid = (profile * (np.arange(len(profile)) + 0.5)).sum() / profile.sum()
        assert abs(centroid - (start + stop) / 2 * out.scale) < 0.05, (axis, centroid)
    ys, xs = np.nonzero(out.masks[0].numpy())
    mask_box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    assert np.abs(mask_box - out.boxes[0].numpy()).max() <= 0.5


@pytest.mark.parametrize("flip_prob", [0.0, 1.0, 0.5])
def test_lsj_masks_equal_flipping_and_mapping_each_whole_mask(flip_prob: float) -> None:
    # The reference mirrors each full-frame mask with numpy and maps it with apply_to_mask, the
    # whole-frame path; TrainTransform maps only each instance's region.
    transform = TrainTransform(160, min_scale=0.3, max_scale=2.0, flip_prob=flip_prob)
    flipped = set()
    for seed in range(16):
        image, boxes, labels, masks = _scene(seed)
        out = transform(image, boxes, labels, masks, seed=seed)
        _, mirrored, params = transform.augment(image, boxes, labels, seed=seed)  # what that call drew
        flipped.add(mirrored)
        for label, mask in zip(out.labels.tolist(), out.masks.numpy()):
            whole = np.ascontiguousarray(masks[label - 1][:, ::-1] if mirrored else masks[label - 1])
            np.testing.assert_array_equal(mask, transform.jitter.apply_to_mask(whole, **params))
    assert flipped == {0.0: {False}, 1.0: {True}, 0.5: {False, True}}[flip_prob]


def test_lsj_instance_masks_from_rles_equal_dense_masks() -> None:
    for seed in range(8):
        image, boxes, labels, masks = _scene(seed)
        rles = [mask_utils.encode(np.asfortranarray(m)) for m in masks]
        dense = TrainTransform(112)(image, boxes, labels, masks, seed=seed)
        regions = InstanceMasks.from_rles(rles, *masks.shape[1:])
        regions = TrainTransform(112)(image, boxes, labels, regions, seed=seed)
        assert torch.equal(dense.masks, regions.masks) and torch.equal(dense.boxes, regions.boxes)
        assert torch.equal(dense.labels, regions.labels) and torch.equal(dense.image, regions.image)


def test_lsj_keeps_mask_values_and_dtype_as_albumentations_targets() -> None:
    image = np.zeros((40, 60, 3), np.uint8)
    masks = np.zeros((2, 40, 60), np.uint8)
    masks[0, 5:20, 10:30], masks[1, 25:35, 40:55] = 255, 7
    compose = A.Compose([LargeScaleJitter(64, 1.0, 1.0)])
    out = compose(image=image, masks=masks)["masks"]
    assert out.dtype == np.uint8 and [sorted(np.unique(m).tolist()) for m in out] == [[0, 255], [0, 7]]
    single = compose(image=image, mask=masks[0])["mask"]
    np.testing.assert_array_equal(single, out[0])
