"""Tests for vitdense.datamodules.collate."""

from __future__ import annotations

import torch

from vitdense.datamodules import collate_detection


def test_pads_to_max_size_rounded_up_to_divisibility() -> None:
    a = torch.full((3, 50, 70), 7, dtype=torch.uint8)
    b = torch.full((3, 60, 20), 9, dtype=torch.uint8)
    ta = {"image_id": 1, "masks": torch.ones((2, 50, 70), dtype=torch.uint8)}
    tb = {"image_id": 2}
    images, targets = collate_detection([(a, ta), (b, tb)], size_divisibility=56)
    assert images.shape == (2, 3, 112, 112) and images.dtype == torch.uint8
    assert torch.equal(images[0, :, :50, :70], a)
    assert images[0, :, 50:].sum() == 0 and images[0, :, :, 70:].sum() == 0
    assert torch.equal(images[1, :, :60, :20], b) and images[1].sum() == b.sum()
    assert [t["image_id"] for t in targets] == [1, 2]
    assert targets[0]["masks"].shape == (2, 112, 112) and targets[0]["masks"].sum() == 2 * 50 * 70


def test_fixed_canvas_is_stacked_unchanged() -> None:
    batch = [(torch.randint(0, 255, (3, 56, 56), dtype=torch.uint8), {"image_id": i}) for i in range(3)]
    images, targets = collate_detection(batch)
    assert images.shape == (3, 3, 56, 56)
    assert all(torch.equal(images[i], batch[i][0]) for i in range(3))
