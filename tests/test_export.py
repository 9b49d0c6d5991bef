"""Export round trips on tiny random-weight models: the reloaded program matches eager PyTorch, and the check
fails when it does not."""

import copy
import importlib.util

import pytest
import torch
import torchvision
from torch import nn

from tests.tiny import TINY_CONFIG, TINY_NETWORK
from vitdense.backbones import BirderBackbone, SimpleFeaturePyramid
from vitdense.export import (
    ExportCheckError,
    Tolerances,
    check_export,
    export_model,
    exportable,
    nms_keeps_any_count,
)
from vitdense.heads import CascadeMaskRCNN, FasterRCNN, MaskRCNN, PyramidSegmenter, paste_detections

HAS_ONNX = all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxscript"))
SIZE = (224, 168)  # multiples of 56, not square: catches swapped height and width
SMALL = dict(rpn_post_nms_top_n=(200, 100), head_dim=16, fc_dim=32, detections_per_img=20)


def _pyramid() -> SimpleFeaturePyramid:
    torch.manual_seed(0)
    return SimpleFeaturePyramid(BirderBackbone(TINY_NETWORK, config=TINY_CONFIG), out_channels=32)


def _image(seed: int, size: tuple[int, int] = SIZE) -> torch.Tensor:
    return torch.randint(0, 256, (3, *size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


class _NMS(nn.Module):
    def forward(self, boxes: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return torchvision.ops.nms(boxes, scores, 0.5)


def _fewest_boxes_nms_may_keep() -> int:
    """The lower bound that tracing gives the count of boxes ``nms`` keeps: 2 under torchvision's rule."""
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    program = torch.export.export(_NMS(), (boxes, torch.tensor([0.9, 0.8])), strict=False)
    (kept,) = program.range_constraints.values()
    return int(kept.lower)


@pytest.fixture(scope="module")
def mask_rcnn_export(tmp_path_factory):
    # Random heads score every class about 1 / (K + 1) > score_thresh: there are detections to compare.
    model = MaskRCNN(3, _pyramid(), **SMALL).train()
    path = tmp_path_factory.mktemp("export") / "mask_rcnn.pt2"
    report = export_model(model, SIZE, path, sample=_image(0), valid_size=(200, 150), onnx=HAS_ONNX)
    return model, report


@pytest.fixture(scope="module")
def segmenter_export(tmp_path_factory):
    torch.manual_seed(0)
    model = PyramidSegmenter(5, _pyramid(), channels=32, aux_channels=32)
    path = tmp_path_factory.mktemp("export") / "segmenter.pt2"
    return model, export_model(model, SIZE, path, sample=_image(0), onnx=HAS_ONNX)


@pytest.mark.slow(seconds=28)  # with its module fixture's export
def test_mask_rcnn_round_trip(mask_rcnn_export):
    model, report = mask_rcnn_export
    assert model.training, "the model is left in the mode it came in"
    assert report.program_path.is_file() and report.image_size == SIZE
    assert report.input_names == ("images", "valid_size")
    assert report.output_names == ("boxes", "labels", "scores", "num_detections", "masks")
    assert report.num_detections > 0 and not report.warnings
    limits = Tolerances()
    assert report.differences["boxes"] <= limits.box_px and report.differences["scores"] <= limits.score
    assert report.differences["masks"] <= limits.mask

    program = torch.export.load(str(report.program_path))
    graph = str(program.graph)
    assert "torchvision.nms" in graph and "torchvision.roi_align" in graph  # not the CPU gather

    # Another image and valid region than the sample: the program is not specialised to its data.
    images = _image(1)[None]
    with torch.no_grad():
        boxes, labels, scores, count, masks = program.module()(images, torch.tensor([168, 112]))
    n = int(count)
    assert boxes.shape == (20, 4) and labels.shape == scores.shape == (20,) and masks.shape == (20, 1, 28, 28)
    assert 0 < n and (labels[:n] >= 1).all() and (scores[:n] > 0.05).all()
    assert (boxes[:n, 0::2] <= 112).all() and (boxes[:n, 1::2] <= 168).all()  # clipped to the valid region
    assert not boxes[n:].any() and not labels[n:].any() and not scores[n:].any() and not masks[n:].any()
    check_export(program, model, SIZE, images, valid_size=(168, 112))

    # The outputs feed paste_detections as eager detections do.
    detections = {"boxes": boxes[:n], "labels": labels[:n], "scores": scores[:n], "masks": masks[:n]}
    (pasted,) = paste_detections([detections], [0.5], [(336, 224)])
    assert pasted["masks"].shape == (n, 336, 224)


@pytest.mark.skipif(not HAS_ONNX, reason="needs onnx and onnxscript")
def test_mask_rcnn_onnx_is_checked(mask_rcnn_export):
    _, report = mask_rcnn_export
    assert report.onnx_path.is_file()
    assert report.onnx_differences["boxes"] <= Tolerances().box_px
    assert report.onnx_differences["masks"] <= Tolerances().mask
    assert "onnx: matches eager PyTorch" in report.summary()


def test_changed_detector_fails_the_check(mask_rcnn_export):
    model, report = mask_rcnn_export
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.roi_heads.box_predictor.bbox_pred.bias.add_(0.01)  # moves every box by ~0.1 % of its size
    with pytest.raises(
        ExportCheckError, match=r"exported boxes differ from eager PyTorch by .* at detection"
    ):
        check_export(report.program_path, changed, SIZE, _image(0), valid_size=(200, 150))
    with torch.no_grad():
        changed.roi_heads.box_predictor.cls_score.bias[1] += 5.0  # class 1 wins everywhere
    with pytest.raises(ExportCheckError, match="detection"):
        check_export(report.program_path, changed, SIZE, _image(0), valid_size=(200, 150))


@pytest.mark.slow(seconds=9)
def test_faster_rcnn_without_detections(tmp_path):
    """A program that finds nothing still runs: NMS may keep 0 boxes (torchvision's fake kernel says >= 2)."""
    model = FasterRCNN(3, _pyramid(), score_thresh=0.99, **SMALL)
    report = export_model(model, SIZE, tmp_path / "faster_rcnn.pt2", sample=_image(0))
    assert _fewest_boxes_nms_may_keep() == 2, "after an export, torchvision's nms rule is back"
    assert report.output_names == ("boxes", "labels", "scores", "num_detections")
    assert report.num_detections == 0 and "no detections" in report.summary()
    assert "tolerances: box_px 0.01, score 0.0001\n" in report.summary()  # those checked, no mask
    program = torch.export.load(str(report.program_path))
    with torch.no_grad():
        boxes, labels, scores, count = program.module()(_image(2)[None], torch.tensor(SIZE))
    assert int(count) == 0 and boxes.shape == (20, 4) and not boxes.any() and not scores.any()


def test_nms_rule_is_replaced_only_while_exporting():
    # vitdense.export is imported (above): importing it left torchvision's rule in force.
    assert _fewest_boxes_nms_may_keep() == 2
    with nms_keeps_any_count():
        assert _fewest_boxes_nms_may_keep() == 0
    assert _fewest_boxes_nms_may_keep() == 2
    with pytest.raises(RuntimeError, match="failed inside"):
        with nms_keeps_any_count():
            raise RuntimeError("failed inside")
    assert _fewest_boxes_nms_may_keep() == 2


@pytest.mark.slow(seconds=15)
def test_cascade_mask_rcnn_round_trip(tmp_path):
    model = CascadeMaskRCNN(3, _pyramid(), **SMALL).train()
    path = tmp_path / "cascade.pt2"
    report = export_model(model, SIZE, path, sample=_image(0), valid_size=(200, 150))
    assert model.training, "the model is left in the mode it came in"
    assert report.output_names == ("boxes", "labels", "scores", "num_detections", "masks")
    assert report.num_detections > 0 and not report.warnings
    limits = Tolerances()
    assert report.differences["boxes"] <= limits.box_px and report.differences["scores"] <= limits.score
    assert report.differences["masks"] <= limits.mask

    program = torch.export.load(str(path))
    images = _image(1)[None]
    with torch.no_grad():
        boxes, labels, scores, count, masks = program.module()(images, torch.tensor([168, 112]))
    n = int(count)
    assert 0 < n and masks.shape == (20, 1, 28, 28) and (boxes[:n, 0::2] <= 112).all()
    result = check_export(program, model, SIZE, images, valid_size=(168, 112))
    assert result.num_detections == n and result.differences["masks"] <= limits.mask


def test_segmenter_round_trip(segmenter_export):
    model, report = segmenter_export
    assert report.output_names == ("logits",) and report.num_detections is None
    assert report.summary().endswith("tolerances: logit 0.001, logit_rel 0.0001")
    assert report.differences["logits"] <= Tolerances().logit
    if HAS_ONNX:
        assert report.onnx_differences["logits"] <= Tolerances().logit
    program = torch.export.load(str(report.program_path))
    with torch.no_grad():
        logits = program.module()(_image(3)[None])
    assert logits.shape == (1, 5, *SIZE)
    check_export(program, model, SIZE, _image(3))


def test_changed_segmenter_fails_the_check(segmenter_export):
    model, report = segmenter_export
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.head.classifier.bias[2] += 0.05
    with pytest.raises(ExportCheckError, match=r"exported logits differ .* at \(b, k, y, x\) = \(0, 2,"):
        check_export(report.program_path, changed, SIZE, _image(0))


def test_inputs_are_validated():
    model = PyramidSegmenter(2, _pyramid(), channels=32, aux_channels=None)
    task = nn.Module()
    task.model = model  # a task holds its model as `.model`
    assert exportable(task, SIZE).segmenter is model
    with pytest.raises(ValueError, match=r"multiples of the model's size_divisibility 56, e.g. 224x224"):
        exportable(model, (224, 200))
    with pytest.raises(TypeError, match="can export an RCNNDetector, a Segmenter"):
        exportable(nn.Linear(1, 1), SIZE)
    with pytest.raises(ValueError, match=r"sample must be one \(3, 224, 168\) image"):
        check_export("unused.pt2", model, SIZE, _image(0, (168, 224)))
