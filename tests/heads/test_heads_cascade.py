"""`CascadeRoIHeads` and `CascadeMaskRCNN` against detectron2's `CascadeROIHeads` on constructed cases."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from birder.layers import LayerNorm2d
from torch import nn

from tests.helpers import assert_detections_within_their_images
from vitdense.heads import cascade_roi_heads
from vitdense.heads.box_coder import DeviceBoxCoder
from vitdense.heads.builders import CascadeMaskRCNN, MaskRCNN, build_cascade_roi_heads
from vitdense.heads.cascade_roi_heads import CascadeRoIHeads, CascadeStage, cascade_stage_loss
from vitdense.heads.matcher import SyncFreeMatcher
from vitdense.heads.roi_align import ExactMultiScaleRoIAlign
from vitdense.heads.sampler import SyncFreeSampler

WEIGHTS = [(10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0)]
SMALL = dict(rpn_post_nms_top_n=(200, 100), roi_batch_size_per_image=64, head_dim=16, fc_dim=32)
GT = torch.tensor([[40.0, 40.0, 140.0, 140.0]])
# Same size as GT, shifted right by dx: IoU (100 - dx) / (100 + dx) = 0.754, 0.653, 0.550; and one far away.
PROPOSALS = torch.tensor(
    [
        [54.0, 40.0, 154.0, 140.0],
        [61.0, 40.0, 161.0, 140.0],
        [69.0, 40.0, 169.0, 140.0],
        [150.0, 150.0, 200.0, 200.0],
    ]
)


def _heads(fake_backbone, masks: bool = False, **kwargs) -> CascadeRoIHeads:
    torch.manual_seed(0)
    return build_cascade_roi_heads(
        fake_backbone, 3, masks=masks, head_dim=16, fc_dim=32, batch_size_per_image=64, **kwargs
    )


def _features(fake_backbone, batch: int = 1) -> dict[str, torch.Tensor]:
    return fake_backbone(torch.rand(batch, 3, 224, 224, generator=torch.Generator().manual_seed(1)))


def _targets(masks: bool = False) -> list[dict[str, torch.Tensor]]:
    target = {"boxes": GT, "labels": torch.tensor([2])}
    if masks:
        target["masks"] = torch.zeros(1, 224, 224, dtype=torch.uint8)
        target["masks"][0, 40:140, 40:140] = 1
    return [target]


def _freeze_regression(heads: CascadeRoIHeads) -> None:
    """Zero deltas: every stage passes its RoIs on unmoved."""
    for stage in heads.stages:
        nn.init.zeros_(stage.box_predictor.bbox_pred.weight)
        nn.init.zeros_(stage.box_predictor.bbox_pred.bias)


def test_default_configuration_is_vitdets_cascade(fake_backbone):
    model = CascadeMaskRCNN(3, fake_backbone)
    roi = model.roi_heads
    reference = MaskRCNN(3, fake_backbone)
    assert repr(model.rpn) == repr(reference.rpn)
    assert len(roi.stages) == 3
    for stage, iou, weights in zip(roi.stages, (0.5, 0.6, 0.7), WEIGHTS):
        matcher = stage.proposal_matcher
        assert isinstance(matcher, SyncFreeMatcher)
        assert (matcher.high_threshold, matcher.low_threshold, matcher.allow_low_quality_matches) == (
            iou,
            iou,
            False,
        )
        assert isinstance(stage.box_coder, DeviceBoxCoder) and stage.box_coder.weights == weights
        convs = [m for m in stage.box_head.modules() if isinstance(m, nn.Conv2d)]
        assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(16, 256, (3, 3))] + [
            (256, 256, (3, 3))
        ] * 3
        assert sum(isinstance(m, LayerNorm2d) for m in stage.box_head.modules()) == 4
        assert [m.out_features for m in stage.box_head.modules() if isinstance(m, nn.Linear)] == [1024]
        # Class-agnostic regression: 4 deltas, K + 1 scores.
        assert stage.box_predictor.bbox_pred.out_features == 4
        assert stage.box_predictor.cls_score.out_features == 4
    # Three heads, not one shared.
    assert len({id(p) for stage in roi.stages for p in stage.parameters()}) == 3 * len(
        list(roi.stages[0].parameters())
    )
    for pool, size in ((roi.box_roi_pool, (7, 7)), (roi.mask_roi_pool, (14, 14))):
        assert isinstance(pool, ExactMultiScaleRoIAlign)
        assert pool.featmap_names == ["p2", "p3", "p4", "p5"]
        assert pool.strides == [3.5, 7.0, 14.0, 28.0]  # the true strides of a patch-14 pyramid
        assert pool.output_size == size
    assert sum(isinstance(m, LayerNorm2d) for m in roi.mask_head.modules()) == 4
    assert roi.mask_predictor.mask_fcn_logits.out_channels == 4
    assert isinstance(roi.fg_bg_sampler, SyncFreeSampler)
    assert (roi.fg_bg_sampler.batch_size_per_image, roi.fg_bg_sampler.positive_fraction) == (512, 0.25)
    assert (roi.score_thresh, roi.nms_thresh, roi.detections_per_img) == (0.05, 0.5, 100)
    assert roi.has_mask() and not build_cascade_roi_heads(fake_backbone, 3, masks=False).has_mask()


def test_each_stage_matches_at_its_iou_and_encodes_with_its_weights(fake_backbone):
    heads = _heads(fake_backbone).train()
    _freeze_regression(heads)
    outputs = heads.forward_stages(_features(fake_backbone), [PROPOSALS], [(224, 224)], _targets())
    # Few candidates: all are sampled, in order, ground truth last.
    rois = torch.cat([PROPOSALS, GT])
    expected_labels = [
        [2, 2, 2, 0, 2],  # IoU >= 0.5
        [2, 2, 0, 0, 2],  # IoU >= 0.6: the 0.55 proposal is background
        [2, 0, 0, 0, 2],  # IoU >= 0.7: the 0.65 proposal is background
    ]
    for k, (out, labels, weights) in enumerate(zip(outputs, expected_labels, WEIGHTS)):
        torch.testing.assert_close(out.proposals[0], rois, rtol=0, atol=0)
        assert out.labels[0].tolist() == labels, k
        foreground = out.labels[0] > 0
        expected = DeviceBoxCoder(weights).encode_single(GT.expand(5, 4), rois)
        torch.testing.assert_close(out.regression_targets[foreground], expected[foreground])
    # Weights (20, 20, 10, 10) double the first stage's targets.
    torch.testing.assert_close(outputs[1].regression_targets, 2 * outputs[0].regression_targets)


def test_ground_truth_joins_only_the_first_stages_proposals(fake_backbone):
    # detectron2: `label_and_sample_proposals` (ground truth added, 512 sampled) once, before the first stage;
    # later stages match the previous stage's boxes for exactly those RoIs.
    heads = _heads(fake_backbone).train()
    proposals = [PROPOSALS.repeat(40, 1) + torch.rand(160, 4, generator=torch.Generator().manual_seed(0))]
    outputs = heads.forward_stages(_features(fake_backbone), proposals, [(224, 224)], _targets())
    # 161 candidates (the box added), 121 positive: 64 x 25 % = 16 positives and all 40 negatives sampled.
    assert outputs[0].labels[0].gt(0).sum() == 16 and len(outputs[0].proposals[0]) == 56
    for out in outputs[1:]:
        assert len(out.proposals[0]) == 56  # nothing added, nothing resampled


def test_later_stages_take_the_previous_stages_boxes_detached(fake_backbone):
    heads = _heads(fake_backbone).train()
    for stage in heads.stages:  # regressions large enough to move the boxes clearly
        nn.init.normal_(stage.box_predictor.bbox_pred.weight, std=0.3)
    outputs = heads.forward_stages(_features(fake_backbone), [PROPOSALS], [(224, 224)], _targets())
    for k in (1, 2):
        previous = outputs[k - 1]
        expected = heads.stages[k - 1].decode(previous.box_deltas, previous.proposals, [(224, 224)])[0]
        assert not torch.equal(expected, previous.proposals[0])
        torch.testing.assert_close(outputs[k].proposals[0], expected.detach())
        assert not outputs[k].proposals[0].requires_grad
    # Later stages' losses reach neither the first stage's predictor nor its head: only through features.
    losses = [
        cascade_stage_loss(out.class_logits, out.box_deltas, out.labels, out.regression_targets)
        for out in outputs
    ]
    sum(losses[1]).add(sum(losses[2])).backward()
    assert all(p.grad is None for p in heads.stages[0].parameters())
    assert all(p.grad is not None for p in heads.stages[2].parameters())


def test_boxes_that_leave_the_image_are_dropped_in_training_and_kept_in_eval(fake_backbone):
    heads = _heads(fake_backbone).train()
    nn.init.zeros_(heads.stages[0].box_predictor.bbox_pred.weight)
    with torch.no_grad():  # every box moves 50 widths right: clipped to zero width at x = 224
        heads.stages[0].box_predictor.bbox_pred.bias.copy_(torch.tensor([500.0, 0.0, 0.0, 0.0]))
    features = _features(fake_backbone)
    outputs = heads.forward_stages(features, [PROPOSALS], [(224, 224)], _targets())
    assert [len(o.proposals[0]) for o in outputs] == [5, 0, 0]
    _, losses = heads(features, [PROPOSALS], [(224, 224)], _targets())
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_classifier_stage1"] == 0 and losses["loss_box_reg_stage2"] == 0
    heads.eval()
    with torch.no_grad():
        outputs = heads.forward_stages(features, [PROPOSALS], [(224, 224)])
    assert [len(o.proposals[0]) for o in outputs] == [4, 4, 4]


def test_pooled_features_pass_a_third_of_their_gradient(fake_backbone, monkeypatch):
    heads = _heads(fake_backbone).train()
    pooled, head_inputs = [], []
    heads.box_roi_pool.register_forward_hook(lambda m, args, out: pooled.append(out) or out.retain_grad())
    for stage in heads.stages:
        stage.box_head.register_forward_pre_hook(
            lambda m, args: head_inputs.append(args[0]) or args[0].retain_grad()
        )
    features = {name: f.detach().requires_grad_() for name, f in _features(fake_backbone).items()}
    torch.manual_seed(3)
    _, losses = heads(features, [PROPOSALS], [(224, 224)], _targets())
    sum(losses.values()).backward()
    assert len(pooled) == len(head_inputs) == 3
    for before, after in zip(pooled, head_inputs):
        assert after.grad.abs().sum() > 0
        torch.testing.assert_close(before.grad, after.grad / 3)
    scaled = {name: f.grad for name, f in features.items()}

    # Unscaled, the same step sends three times the gradient into the features (no mask branch here).
    monkeypatch.setattr(cascade_roi_heads, "scale_gradient", lambda x, scale: x)
    features = {name: f.detach().requires_grad_() for name, f in features.items()}
    torch.manual_seed(3)
    _, losses = heads(features, [PROPOSALS], [(224, 224)], _targets())
    sum(losses.values()).backward()
    assert scaled["p2"].abs().sum() > 0  # 100 px boxes pool from p2 only
    for name, f in features.items():
        assert (scaled[name] is None) == (f.grad is None)
        if f.grad is not None:
            torch.testing.assert_close(scaled[name], f.grad / 3)


def test_eval_scores_are_the_mean_of_the_stages_and_boxes_the_last_stages(fake_backbone):
    # Nothing thresholded or suppressed: every (RoI, class) pair is a detection.
    heads = _heads(fake_backbone, score_thresh=0.0, nms_thresh=1.0, detections_per_img=1000).eval()
    for stage in heads.stages:
        nn.init.normal_(stage.box_predictor.bbox_pred.weight, std=0.3)
        nn.init.normal_(stage.box_predictor.cls_score.weight, std=0.3)
    features = _features(fake_backbone)
    proposals = [PROPOSALS + torch.rand(4, 4, generator=torch.Generator().manual_seed(2))]
    with torch.no_grad():
        (detections,), losses = heads(features, proposals, [(200, 210)])
        outputs = heads.forward_stages(features, proposals, [(200, 210)])
    assert losses == {}
    probabilities = [o.class_logits.softmax(-1) for o in outputs]
    scores = (probabilities[0] + probabilities[1] + probabilities[2]) / 3
    boxes = heads.stages[2].decode(outputs[2].box_deltas, outputs[2].proposals, [(200, 210)])[0]
    assert not torch.equal(boxes, outputs[2].proposals[0])
    expected = sorted(
        ((scores[i, c].item(), c, boxes[i].tolist()) for i in range(4) for c in (1, 2, 3)), reverse=True
    )
    assert detections["labels"].tolist() == [c for _, c, _ in expected]
    torch.testing.assert_close(detections["scores"], torch.tensor([s for s, _, _ in expected]))
    torch.testing.assert_close(detections["boxes"], torch.tensor([b for _, _, b in expected]))
    assert detections["boxes"][:, 2].max() <= 210 and detections["boxes"][:, 3].max() <= 200
    # With thresholds: only scores above score_thresh, at most detections_per_img.
    heads.detections_per_img, heads.score_thresh, heads.nms_thresh = 5, expected[8][0], 0.5
    with torch.no_grad():
        (detections,), _ = heads(features, proposals, [(200, 210)])
    assert 0 < len(detections["scores"]) <= 5 and detections["scores"].min() > expected[8][0]


def test_masks_train_on_the_first_stages_positives_and_run_on_the_final_boxes(fake_backbone):
    heads = _heads(fake_backbone, masks=True).train()
    for stage in heads.stages:
        nn.init.normal_(stage.box_predictor.bbox_pred.weight, std=0.3)
    pooled_boxes = []
    heads.mask_roi_pool.register_forward_hook(lambda m, args, out: pooled_boxes.append(args[1]))
    features = _features(fake_backbone)
    _, losses = heads(features, [PROPOSALS], [(224, 224)], _targets(masks=True))
    assert set(losses) == {f"loss_{n}_stage{k}" for n in ("classifier", "box_reg") for k in range(3)} | {
        "loss_mask"
    }
    # detectron2 trains the mask head on the RoIs of `label_and_sample_proposals` (IoU >= 0.5), not on a
    # later stage's: here every candidate is sampled, so these are the proposals at IoU >= 0.5 and the box.
    torch.testing.assert_close(pooled_boxes[0][0], torch.cat([PROPOSALS[:3], GT]), rtol=0, atol=0)

    heads.eval()
    with torch.no_grad():
        (detections,), _ = heads(features, [PROPOSALS], [(224, 224)])
    torch.testing.assert_close(pooled_boxes[1][0], detections["boxes"], rtol=0, atol=0)
    n = len(detections["boxes"])
    assert n > 0 and detections["masks"].shape == (n, 1, 28, 28)
    assert detections["masks"].min() >= 0 and detections["masks"].max() <= 1


def test_checks_its_parts_and_targets(fake_backbone):
    heads = _heads(fake_backbone, masks=True).train()
    targets = _targets(masks=True)
    targets[0]["labels"] = targets[0]["labels"].float()
    with pytest.raises(TypeError, match=r"targets\[0\]\['labels'\] must be int64"):
        heads(_features(fake_backbone), [PROPOSALS], [(224, 224)], targets)
    with pytest.raises(ValueError, match=r"targets\[0\] has no 'masks'"):
        heads(_features(fake_backbone), [PROPOSALS], [(224, 224)], _targets(masks=False))
    stage = heads.stages[0]
    with pytest.raises(ValueError, match=r"SyncFreeMatcher\(iou, iou, False\)"):
        CascadeStage(stage.box_head, stage.box_predictor, stage.box_coder, SyncFreeMatcher(0.5, 0.4))
    with pytest.raises(ValueError, match="or none of them"):
        CascadeRoIHeads(
            heads.box_roi_pool, heads.stages, heads.fg_bg_sampler, 0.05, 0.5, 100, heads.mask_roi_pool
        )
    with pytest.raises(ValueError, match="one IoU threshold and one box-coder weight tuple per stage"):
        build_cascade_roi_heads(fake_backbone, 3, iou_thresholds=(0.5, 0.6))


def _batch():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 224, 224), generator=gen, dtype=torch.uint8)
    masks = torch.zeros(2, 224, 224, dtype=torch.uint8)
    masks[0, 30:150, 20:120] = 1
    masks[1, 60:110, 100:200] = 1
    targets = [
        {
            "boxes": torch.tensor([[20.0, 30.0, 120.0, 150.0], [100.0, 60.0, 200.0, 110.0]]),
            "labels": torch.tensor([1, 3]),
            "masks": masks,
        },
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "masks": masks[:0]},
    ]
    return images, [(224, 224), (200, 180)], targets


@pytest.mark.parametrize("autocast", [False, True])
def test_train_and_eval_step(fake_backbone, autocast):
    model = CascadeMaskRCNN(3, fake_backbone, **SMALL)
    images, sizes, targets = _batch()
    model.train()
    stage_boxes = []
    model.roi_heads.box_roi_pool.register_forward_hook(lambda m, args, out: stage_boxes.append(args[1]))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        losses = model(images, sizes, targets)
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_mask"} | {
        f"loss_{n}_stage{k}" for n in ("classifier", "box_reg") for k in range(3)
    }
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    # Boxes stay float32 under bf16 autocast (a bf16 corner past 512 px would move to a multiple of 4).
    assert all(b.dtype == torch.float32 for boxes in stage_boxes for b in boxes)
    sum(losses.values()).backward()
    assert fake_backbone.stem.weight.grad is not None and fake_backbone.stem.weight.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        detections = model(images.float() / 255, sizes)
    assert len(detections) == 2
    assert_detections_within_their_images(detections, sizes, num_classes=3, mask_size=28)


def _host_syncs():
    benchmarks = Path(__file__).resolve().parents[2] / "benchmarks"
    sys.path.insert(0, str(benchmarks))
    try:
        spec = importlib.util.spec_from_file_location("host_syncs", benchmarks / "host_syncs.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(benchmarks))


def test_each_stage_synchronises_no_more_than_mask_rcnns_box_head(fake_backbone):
    host_syncs = _host_syncs()
    images, targets = host_syncs.synthetic_batch(2, 224, 10, torch.device("cpu"))
    counts = {}
    for build in (MaskRCNN, CascadeMaskRCNN):
        torch.manual_seed(0)
        model = build(80, fake_backbone, **SMALL).train()
        step = lambda: sum(model(images, [(224, 224)] * 2, targets).values()).backward()  # noqa: E731
        step()
        with host_syncs.as_on_cuda(), host_syncs.counting_host_syncs() as counter:
            step()
        heads_files = ("roi_heads.py", "cascade_roi_heads.py", "roi_align.py")
        counts[build] = {
            where: n
            for where, n in counter.counts.items()
            if where.split(" @ ")[1].split(":")[0].endswith(heads_files)
        }
    mask_rcnn = sum(counts[MaskRCNN].values())
    cascade = sum(counts[CascadeMaskRCNN].values())
    # The first stage's box and mask heads, then two more stages, each no worse than Mask R-CNN's box head:
    # pooling (<= 4 levels) and picking the RoIs (here once per batch; torchvision: once per image).
    assert cascade <= mask_rcnn + 2 * (4 + 2), (counts[MaskRCNN], counts[CascadeMaskRCNN])
    ours = [w for w in counts[CascadeMaskRCNN] if "cascade_roi_heads.py" in w]
    assert sum(counts[CascadeMaskRCNN][w] for w in ours) == 4  # sampling, 2 refinements, mask positives
