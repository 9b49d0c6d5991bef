"""`AlignedRoIHeads`: torchvision's RoI heads, with mask targets cropped in the features' pixel convention."""

import pytest
import torch
from torchvision.models.detection.roi_heads import RoIHeads

from vitdense.heads.builders import build_roi_heads
from vitdense.heads.roi_align import roi_align
from vitdense.heads.roi_heads import AlignedRoIHeads, mask_targets


def _rectangle(x1: int, y1: int, x2: int, y2: int, size: int = 112) -> torch.Tensor:
    mask = torch.zeros(1, size, size, dtype=torch.uint8)
    mask[0, y1:y2, x1:x2] = 1
    return mask


def test_a_box_on_a_mask_gets_an_all_ones_target():
    # A 28 x 28 px box on a 28 x 28 px object: one pixel per bin, every bin inside the object. torchvision's
    # aligned=False crop reads each bin half a pixel down-right, so its last row and column were 0.5.
    target = mask_targets(
        _rectangle(30, 40, 58, 68), torch.tensor([[30.0, 40.0, 58.0, 68.0]]), torch.tensor([0]), 28
    )
    assert torch.equal(target, torch.ones(1, 28, 28))


@pytest.mark.parametrize("box", [(17, 9, 54, 32), (3, 50, 100, 61)])
def test_targets_of_a_box_on_a_mask_are_symmetric(box):
    # Any box drawn exactly around a rectangle sees it centred: the target equals its own mirror images.
    target = mask_targets(_rectangle(*box), torch.tensor([box], dtype=torch.float32), torch.tensor([0]), 28)[
        0
    ]
    torch.testing.assert_close(target, target.flip(0), rtol=0, atol=1e-5)
    torch.testing.assert_close(target, target.flip(1), rtol=0, atol=1e-5)
    assert target.min() > 0.4


def test_targets_are_what_the_mask_pooler_reads_from_the_mask():
    # The mask as a stride-1 feature map, pooled by the heads' RoIAlign (2 samples per bin; the targets sample
    # about once per pixel): on a 56 px box both sample at the same points.
    mask = torch.rand(1, 112, 112, generator=torch.Generator().manual_seed(0))
    box = torch.tensor([[11.0, 23.0, 67.0, 79.0]])
    pooled = roi_align(mask[None], torch.cat([torch.zeros(1, 1), box], 1), 28, 1.0, sampling_ratio=2)[0, 0]
    torch.testing.assert_close(mask_targets(mask, box, torch.tensor([0]), 28)[0], pooled)


def _heads(fake_backbone, masks: bool) -> tuple[AlignedRoIHeads, RoIHeads]:
    torch.manual_seed(0)
    ours = build_roi_heads(fake_backbone, 3, masks=masks, head_dim=16, fc_dim=32, batch_size_per_image=64)
    parts = {
        "mask_roi_pool": ours.mask_roi_pool,
        "mask_head": ours.mask_head,
        "mask_predictor": ours.mask_predictor,
    }
    theirs = RoIHeads(
        ours.box_roi_pool,
        ours.box_head,
        ours.box_predictor,
        0.5,
        0.5,
        64,
        0.25,
        (10.0, 10.0, 5.0, 5.0),
        ours.score_thresh,
        ours.nms_thresh,
        ours.detections_per_img,
        **(parts if masks else {}),
    )
    theirs.proposal_matcher, theirs.fg_bg_sampler, theirs.box_coder = (
        ours.proposal_matcher,
        ours.fg_bg_sampler,
        ours.box_coder,
    )
    return ours, theirs


def _inputs(fake_backbone):
    gen = torch.Generator().manual_seed(1)
    features = fake_backbone(torch.rand(2, 3, 224, 224, generator=gen))
    proposals = []
    for _ in range(2):
        xy = torch.rand(40, 2, generator=gen) * 150
        proposals.append(torch.cat([xy, xy + 10 + torch.rand(40, 2, generator=gen) * 60], 1))
    boxes = torch.tensor([[20.0, 30.0, 120.0, 150.0], [100.0, 60.0, 200.0, 110.0]])
    targets = [
        {"boxes": boxes, "labels": torch.tensor([1, 3]), "masks": torch.ones(2, 224, 224, dtype=torch.uint8)},
        {
            "boxes": boxes[:1],
            "labels": torch.tensor([2]),
            "masks": torch.ones(1, 224, 224, dtype=torch.uint8),
        },
    ]
    for t, p in zip(targets, proposals):
        p[: len(t["boxes"])] = t["boxes"] + 2  # some positives
    return features, proposals, [(224, 224), (210, 200)], targets


@pytest.mark.parametrize("masks", [False, True])
def test_equals_torchvisions_heads_where_the_targets_agree(fake_backbone, masks):
    # All-ones ground-truth masks crop to all-ones targets in either convention, so every loss and every
    # detection must be torchvision's.
    ours, theirs = _heads(fake_backbone, masks)
    features, proposals, shapes, targets = _inputs(fake_backbone)
    torch.manual_seed(5)
    _, our_losses = ours(features, proposals, shapes, targets)
    torch.manual_seed(5)
    _, their_losses = theirs(features, proposals, shapes, targets)
    assert (
        our_losses.keys()
        == their_losses.keys()
        == {"loss_classifier", "loss_box_reg"} | ({"loss_mask"} if masks else set())
    )
    for key in our_losses:
        torch.testing.assert_close(our_losses[key], their_losses[key])
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        our_detections, _ = ours(features, proposals, shapes)
        their_detections, _ = theirs(features, proposals, shapes)
    for a, b in zip(our_detections, their_detections):
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key])


class _Constant(torch.nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 4, 28, 28), self.value)


def test_training_scores_masks_against_aligned_targets(fake_backbone):
    # Positives are exactly the ground-truth boxes (28 x 28 px on 28 x 28 px objects), whose aligned targets
    # are all ones: a head predicting +20 everywhere loses ~2e-9. torchvision's targets (last row and column
    # 0.5) would cost ~0.7.
    ours, _ = _heads(fake_backbone, masks=True)
    features, _, shapes, _ = _inputs(fake_backbone)
    boxes = torch.tensor([[20.0, 30.0, 48.0, 58.0], [100.0, 60.0, 128.0, 88.0]])
    masks = torch.cat([_rectangle(20, 30, 48, 58, 224), _rectangle(100, 60, 128, 88, 224)])
    targets = [{"boxes": boxes, "labels": torch.tensor([1, 3]), "masks": masks}] * 2
    far = torch.tensor([[170.0, 150.0, 200.0, 190.0]]).repeat(8, 1)  # negatives only
    ours.mask_predictor = _Constant(20.0)
    _, losses = ours(features, [far, far], shapes, targets)
    assert losses["loss_mask"] < 1e-6


def test_rejects_keypoints_and_float_labels(fake_backbone):
    ours, _ = _heads(fake_backbone, masks=False)
    features, proposals, shapes, targets = _inputs(fake_backbone)
    targets[1]["labels"] = targets[1]["labels"].float()
    with pytest.raises(TypeError, match=r"targets\[1\]\['labels'\] must be int64"):
        ours(features, proposals, shapes, targets)


def test_a_target_without_masks_is_named(fake_backbone):
    ours, _ = _heads(fake_backbone, masks=True)
    features, proposals, shapes, targets = _inputs(fake_backbone)
    del targets[1]["masks"]
    with pytest.raises(ValueError, match=r"targets\[1\] has no 'masks'"):
        ours(features, proposals, shapes, targets)
