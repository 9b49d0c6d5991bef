"""The shared eval post-processing: torchvision's results bit for bit, also for tensor image sizes."""

import pytest
import torch
from torchvision.models.detection.image_list import ImageList

from vitdense.heads.builders import build_rpn
from vitdense.heads.detection_postprocess import clip_boxes, mask_probabilities, propose, select_detections


def test_clipping_to_a_tensor_size_equals_clipping_to_ints():
    boxes = torch.randn(50, 3, 4, generator=torch.Generator().manual_seed(0)) * 300
    clipped = clip_boxes(boxes, (120, 90))
    assert torch.equal(clip_boxes(boxes, torch.tensor([120, 90])), clipped)
    assert clipped[..., 0::2].max() == 90 and clipped[..., 1::2].max() == 120 and clipped.min() == 0


@pytest.mark.parametrize("pre_nms_top_n", [1000, 20])  # above and below batched_nms's 1000-box switch
def test_proposals_are_the_rpns(fake_backbone, pre_nms_top_n):
    rpn = build_rpn(fake_backbone, pre_nms_top_n=(2000, pre_nms_top_n), post_nms_top_n=(1000, 300)).eval()
    images = torch.rand(2, 3, 224, 168, generator=torch.Generator().manual_seed(1))
    sizes = [(224, 168), (190, 120)]
    with torch.no_grad():
        features = fake_backbone(images)
        theirs, _ = rpn(ImageList(images, sizes), features)
        ours = propose(rpn, images, features, sizes)
        as_tensors = propose(rpn, images, features, [torch.tensor(s) for s in sizes])
    for a, b, c in zip(theirs, ours, as_tensors, strict=True):
        assert len(a) > 0 and torch.equal(a, b) and torch.equal(a, c)


def test_class_agnostic_boxes_stand_for_every_class():
    generator = torch.Generator().manual_seed(2)
    corners = torch.rand(40, 2, generator=generator) * 100
    boxes = torch.cat([corners, corners + 5 + torch.rand(40, 2, generator=generator) * 50], dim=1)
    scores = torch.softmax(torch.randn(40, 4, generator=generator), dim=1)
    limits = dict(score_thresh=0.2, nms_thresh=0.5, detections_per_img=15)
    agnostic = select_detections(boxes, scores, (110, 120), **limits)
    repeated = select_detections(boxes[:, None].repeat(1, 4, 1), scores, torch.tensor([110, 120]), **limits)
    for a, b in zip(agnostic, repeated, strict=True):
        assert torch.equal(a, b)
    kept_boxes, kept_scores, labels = agnostic
    assert 0 < len(labels) <= 15 and (labels >= 1).all() and (kept_scores > 0.2).all()
    assert (kept_scores[:-1] >= kept_scores[1:]).all() and kept_boxes[:, 2].max() <= 120


def test_mask_probabilities_take_each_detections_class():
    logits = torch.randn(5, 4, 28, 28, generator=torch.Generator().manual_seed(3))
    first, second = mask_probabilities(logits, [torch.tensor([1, 3]), torch.tensor([2, 2, 1])])
    assert first.shape == (2, 1, 28, 28) and second.shape == (3, 1, 28, 28)
    torch.testing.assert_close(first[1, 0], logits[1, 3].sigmoid())
    torch.testing.assert_close(second[2, 0], logits[4, 1].sigmoid())
