"""Tests for vitdense.datamodules.instance_masks: RLE read and written by regions, as pycocotools does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from vitdense.datamodules.instance_masks import (
    InstanceMasks,
    _regions_on_the_device,
    encode_masks,
    rle_counts,
    rle_of_region,
)


def _random_masks(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    masks = np.zeros((n, h, w), np.uint8)
    for mask in masks:
        kind = rng.integers(4)
        if kind == 0:  # noise: many short runs, negative differences between counts
            mask[:] = rng.random((h, w)) < 0.5
        elif kind == 1:  # everything
            mask[:] = 1
        elif kind == 2:  # a few rectangles, some touching the border
            for _ in range(rng.integers(1, 4)):
                y, x = rng.integers(-10, h), rng.integers(-10, w)
                mask[max(0, y) : y + rng.integers(1, h + 1), max(0, x) : x + rng.integers(1, w + 1)] = 1
        # kind 3: empty
    return masks


def test_region_decoding_equals_pycocotools() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w = (int(v) for v in rng.integers(1, 90, 2))
        masks = _random_masks(rng, 4, h, w)
        compressed = [mask_utils.encode(np.asfortranarray(m)) for m in masks]
        decoded = InstanceMasks.from_rles(compressed, h, w)
        np.testing.assert_array_equal(decoded.to_dense(), masks)
        for crop, (x, y), mask in zip(decoded.crops, decoded.origins, masks):
            bx, by, bw, bh = (int(v) for v in mask_utils.toBbox(mask_utils.encode(np.asfortranarray(mask))))
            assert crop.shape == (bh, bw) and (bw == 0 or (x, y) == (bx, by))  # only the tight box


def test_counts_of_compressed_and_uncompressed_rle_agree() -> None:
    rng = np.random.default_rng(1)
    # Long runs: counts of several 5-bit characters (a 1-pixel object in a 600 x 700 frame).
    mask = np.zeros((600, 700), np.uint8)
    mask[599, 699] = mask[0, 0] = mask[300, 20:400] = 1
    for m in [mask, *_random_masks(rng, 20, 37, 53)]:
        compressed = mask_utils.encode(np.asfortranarray(m))
        flat = m.ravel(order="F")
        change = np.flatnonzero(np.diff(flat)) + 1
        bounds = np.concatenate([[0], change, [flat.size]])
        expected = np.diff(bounds)
        if flat[0]:
            expected = np.concatenate([[0], expected])
        np.testing.assert_array_equal(rle_counts(compressed), expected)
        uncompressed = {"size": list(m.shape), "counts": expected.tolist()}
        np.testing.assert_array_equal(rle_counts(uncompressed), expected)


def test_rle_that_does_not_cover_its_size_is_refused() -> None:
    with pytest.raises(ValueError, match="cover 12 pixels, not its size 4x4"):
        rle_counts({"size": [4, 4], "counts": [5, 7]})
    rle = mask_utils.encode(np.asfortranarray(np.ones((4, 4), np.uint8)))
    with pytest.raises(ValueError, match="not the image's 5x4"):
        InstanceMasks.from_rles([rle], 5, 4)


def test_dense_round_trip_flip_and_select() -> None:
    rng = np.random.default_rng(2)
    masks = _random_masks(rng, 6, 31, 47)
    masks = masks * 7  # nonzero is foreground; values and dtype are kept
    regions = InstanceMasks.from_dense(masks)
    np.testing.assert_array_equal(regions.to_dense(), masks)
    np.testing.assert_array_equal(regions.flip_horizontal().to_dense(), masks[:, :, ::-1])
    np.testing.assert_array_equal(regions.select([4, 0, 4]).to_dense(), masks[[4, 0, 4]])
    assert InstanceMasks.from_dense(masks.astype(bool)).to_dense().dtype == bool
    assert len(regions.select([])) == 0 and regions.select([]).to_dense().shape == (0, 31, 47)


def test_a_small_object_in_a_huge_frame_costs_its_box() -> None:
    # A 30000 x 40000 frame would take 1.2 GB per instance as a dense mask.
    h, w = 30000, 40000
    polygons = [
        [[39000.5, 100.0, 39990.0, 100.0, 39990.0, 180.25]],
        [[10.0, 29000.0, 60.0, 29000.0, 35.0, 29990.0]],
    ]
    rles = [mask_utils.merge(mask_utils.frPyObjects(p, h, w)) for p in polygons]
    regions = InstanceMasks.from_rles(rles, h, w)
    boxes = [[int(v) for v in mask_utils.toBbox(rle)] for rle in rles]
    assert [crop.shape for crop in regions.crops] == [(bh, bw) for _, _, bw, bh in boxes]
    assert regions.origins.tolist() == [[x, y] for x, y, _, _ in boxes]
    assert all(0 < crop.size < 10**5 and crop.any() for crop in regions.crops)


def test_encoding_masks_by_their_regions_equals_pycocotools() -> None:
    rng = np.random.default_rng(3)
    for _ in range(150):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        masks = _random_masks(rng, int(rng.integers(0, 6)), h, w).astype(bool)
        if len(masks) and rng.random() < 0.3:  # full columns: runs that go on into the next column
            masks[0, :, int(rng.integers(0, w)) :] = True
        encoded = encode_masks(torch.from_numpy(masks))
        assert len(encoded) == len(masks)
        for rle, mask in zip(encoded, masks):
            expected = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            assert rle["counts"] == expected["counts"] and list(rle["size"]) == [h, w]
        if len(masks):  # the GPU's way, run here on the CPU: the same regions as OpenCV's
            on_device = _regions_on_the_device(torch.from_numpy(masks))
            assert on_device.origins.tolist() == InstanceMasks.from_dense(masks).origins.tolist()
            assert on_device.to_rles() == encoded
    corner = np.zeros((7, 5), np.uint8)
    corner[0, 0] = corner[6, 4] = 1  # the first and the last pixel of the frame
    assert rle_of_region(corner, 0, 0, 7, 5) == mask_utils.encode(np.asfortranarray(corner))
    empty = mask_utils.encode(np.zeros((7, 5), np.uint8, order="F"))  # one run of 35 zeros
    assert rle_of_region(np.zeros((0, 0), np.uint8), 0, 0, 7, 5) == empty


def test_rles_with_zero_length_runs_decode_as_pycocotools_decodes_them() -> None:
    # Valid for COCO (counts >= 0 summing to h * w); pycocotools' toBbox is garbage on the empty ones.
    h, w = 4, 5
    for counts in (
        [20, 0],
        [0, 0, 20],
        [6, 0, 4, 3, 7],
        [2, 3, 0, 4, 11],
        [10, 10, 0],
        [0, 20],
        [12, 8, 0, 0],
    ):
        rle = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
        decoded = InstanceMasks.from_rles([rle], h, w)
        np.testing.assert_array_equal(decoded.to_dense()[0], mask_utils.decode(rle), err_msg=str(counts))


def test_encoding_takes_any_dtype_and_empty_frames() -> None:
    mask = np.zeros((5, 7), np.uint8)
    mask[1:4, 2:6] = 1
    expected = mask_utils.encode(np.asfortranarray(mask))
    for dtype in (torch.bool, torch.uint8, torch.float32, torch.int64):
        assert encode_masks(torch.from_numpy(mask).to(dtype)[None]) == [expected], dtype
    assert encode_masks(torch.zeros(2, 0, 0, dtype=torch.bool)) == [
        mask_utils.encode(np.zeros((0, 0, 2), np.uint8, order="F"))[i] for i in range(2)
    ]
