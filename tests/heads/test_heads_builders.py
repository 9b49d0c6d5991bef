import pytest
import torch
from birder.layers import LayerNorm2d
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import box_iou

from tests.helpers import assert_detections_within_their_images
from vitdense.heads.anchor_generator import StrideAnchorGenerator
from vitdense.heads.box_coder import DeviceBoxCoder
from vitdense.heads.builders import FasterRCNN, MaskRCNN
from vitdense.heads.matcher import SyncFreeMatcher
from vitdense.heads.roi_align import ExactMultiScaleRoIAlign
from vitdense.heads.sampler import SyncFreeSampler

# Small heads and proposal budgets keep a CPU step well under a second; the wiring is the default one.
SMALL = dict(rpn_post_nms_top_n=(200, 100), roi_batch_size_per_image=64, head_dim=16, fc_dim=32)
RPN_KEYS = {"loss_objectness", "loss_rpn_box_reg"}
BOX_KEYS = {"loss_classifier", "loss_box_reg"}


def _batch(masks: bool):
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 224, 224), generator=gen, dtype=torch.uint8)
    boxes = torch.tensor([[20.0, 30.0, 120.0, 150.0], [100.0, 60.0, 200.0, 110.0]])
    targets = [
        {"boxes": boxes, "labels": torch.tensor([1, 3])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},  # image without objects
    ]
    if masks:
        m = torch.zeros(2, 224, 224, dtype=torch.uint8)
        m[0, 30:150, 20:120] = 1
        m[1, 60:110, 100:200] = 1
        targets[0]["masks"] = m
        targets[1]["masks"] = torch.zeros(0, 224, 224, dtype=torch.uint8)
    return images, [(224, 224), (200, 180)], targets


def test_default_configuration_is_vitdet(fake_backbone):
    model = MaskRCNN(backbone=fake_backbone, num_classes=3)
    rpn, roi = model.rpn, model.roi_heads
    assert isinstance(rpn.anchor_generator, StrideAnchorGenerator)
    assert rpn.anchor_generator.strides == [3.5, 7.0, 14.0, 28.0, 56.0]
    assert rpn.anchor_generator.sizes == [[28.0], [56.0], [112.0], [224.0], [448.0]]
    assert isinstance(rpn.head, RPNHead) and len(rpn.head.conv) == 2
    assert rpn._pre_nms_top_n == {"training": 2000, "testing": 1000}
    assert rpn._post_nms_top_n == {"training": 1000, "testing": 1000}
    assert rpn.nms_thresh == 0.7
    assert (rpn.fg_bg_sampler.batch_size_per_image, rpn.fg_bg_sampler.positive_fraction) == (256, 0.5)
    for pool, size in ((roi.box_roi_pool, (7, 7)), (roi.mask_roi_pool, (14, 14))):
        assert isinstance(pool, ExactMultiScaleRoIAlign)
        assert pool.featmap_names == ["p2", "p3", "p4", "p5"]
        assert pool.strides == [3.5, 7.0, 14.0, 28.0]
        assert pool.output_size == size
    convs = [m for m in roi.box_head.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [256] * 4
    assert [m.out_features for m in roi.box_head.modules() if isinstance(m, torch.nn.Linear)] == [1024]
    assert sum(isinstance(m, LayerNorm2d) for m in roi.box_head.modules()) == 4
    assert sum(isinstance(m, LayerNorm2d) for m in roi.mask_head.modules()) == 4
    assert roi.box_predictor.cls_score.out_features == 4  # K + 1
    assert roi.mask_predictor.mask_fcn_logits.out_channels == 4
    assert (roi.fg_bg_sampler.batch_size_per_image, roi.fg_bg_sampler.positive_fraction) == (512, 0.25)
    assert (roi.score_thresh, roi.nms_thresh, roi.detections_per_img) == (0.05, 0.5, 100)
    # torchvision's matching and box coding, without its host synchronisations
    for part, thresholds, low_quality, weights in (
        (rpn, (0.7, 0.3), True, (1.0,) * 4),
        (roi, (0.5, 0.5), False, (10.0, 10.0, 5.0, 5.0)),
    ):
        matcher = part.proposal_matcher
        assert isinstance(matcher, SyncFreeMatcher)
        assert (matcher.high_threshold, matcher.low_threshold) == thresholds
        assert matcher.allow_low_quality_matches == low_quality
        assert isinstance(part.box_coder, DeviceBoxCoder) and part.box_coder.weights == weights
        assert isinstance(part.fg_bg_sampler, SyncFreeSampler)
    assert not FasterRCNN(backbone=fake_backbone, num_classes=3).roi_heads.has_mask()


@pytest.mark.parametrize("masks", [False, True])
def test_train_and_eval_step(fake_backbone, masks):
    build = MaskRCNN if masks else FasterRCNN
    model = build(backbone=fake_backbone, num_classes=3, **SMALL)
    images, sizes, targets = _batch(masks)
    model.train()
    losses = model(images, sizes, targets)
    assert set(losses) == RPN_KEYS | BOX_KEYS | ({"loss_mask"} if masks else set())
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    sum(losses.values()).backward()
    assert fake_backbone.stem.weight.grad is not None and fake_backbone.stem.weight.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        dets = model(images.float() / 255, sizes)
    assert len(dets) == 2
    assert_detections_within_their_images(dets, sizes, num_classes=3, mask_size=28 if masks else None)
    for det in dets:
        if masks:
            assert det["masks"].dtype == torch.float32
            assert det["masks"].numel() == 0 or (det["masks"].min() >= 0 and det["masks"].max() <= 1)
        else:
            assert "masks" not in det


def test_num_classes_must_count_foreground(fake_backbone):
    with pytest.raises(ValueError, match="foreground"):
        FasterRCNN(backbone=fake_backbone, num_classes=0)


@pytest.mark.slow(seconds=5)
def test_overfits_one_image(fake_backbone):
    """80 steps (~5 s) on one image with two boxes: the loss falls clearly and the top detection is right.

    The sum of losses is not monotonic: as the RPN improves, more sampled RoIs are positives and the box
    losses rise for a while before they fall, hence the comparison of averaged ends.
    """
    torch.manual_seed(0)
    model = MaskRCNN(backbone=fake_backbone, num_classes=2, **SMALL)
    images, sizes, targets = _batch(masks=True)
    images, sizes, targets = images[:1], sizes[:1], targets[:1]
    targets[0]["labels"] = torch.tensor([1, 2])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    history = []
    for _ in range(80):
        losses = model(images, sizes, targets)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    first, last = sum(history[:3]) / 3, sum(history[-5:]) / 5
    assert last < 0.5 * first, history
    assert losses["loss_objectness"] < 0.2

    model.eval()
    with torch.no_grad():
        det = model(images, sizes)[0]
    iou = box_iou(det["boxes"][:1], targets[0]["boxes"])[0]
    assert iou.max() > 0.7
    assert det["labels"][0] == targets[0]["labels"][iou.argmax()]
