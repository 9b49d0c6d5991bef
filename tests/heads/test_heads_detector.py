import pytest
import torch

from vitdense.heads.builders import FasterRCNN, MaskRCNN
from vitdense.heads.detector import RCNNDetector, paste_detections

SMALL = dict(rpn_post_nms_top_n=(200, 100), roi_batch_size_per_image=64, head_dim=16, fc_dim=32)


def test_uint8_input_is_scaled_to_unit_range(fake_backbone):
    model = FasterRCNN(backbone=fake_backbone, num_classes=2, **SMALL).eval()
    seen = []
    fake_backbone.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    images = torch.full((1, 3, 224, 224), 255, dtype=torch.uint8)
    with torch.no_grad():
        model(images, [(224, 224)])
    assert seen[0].dtype == torch.float32 and seen[0].max() == 1.0


def test_wrong_canvas_size_says_how_to_pad(fake_backbone):
    model = FasterRCNN(backbone=fake_backbone, num_classes=2, **SMALL).eval()
    with pytest.raises(ValueError, match=r"pad the batch to a multiple of 56 \(e.g. 224x280\)"):
        model(torch.zeros(1, 3, 224, 250), [(224, 250)])


def test_training_input_checks(fake_backbone):
    model = FasterRCNN(backbone=fake_backbone, num_classes=2, **SMALL).train()
    images = torch.zeros(1, 3, 224, 224)
    with pytest.raises(ValueError, match="targets are required"):
        model(images, [(224, 224)])
    bad = [{"boxes": torch.tensor([[10.0, 10.0, 5.0, 20.0]]), "labels": torch.tensor([1])}]
    with pytest.raises(ValueError, match=r"targets\[0\]\['boxes'\]\[0\]"):
        model(images, [(224, 224)], bad)
    with pytest.raises(ValueError, match="exceeds"):
        model(images, [(300, 224)], bad)


def test_backbone_contract_is_checked():
    with pytest.raises(TypeError, match="lacks `out_channels`"):
        RCNNDetector(torch.nn.Identity(), torch.nn.Identity(), torch.nn.Identity())


def test_paste_detections_maps_back_to_original():
    # The pipeline resized a 100x150 (h x w) original by 2 onto the canvas.
    mask = torch.zeros(2, 1, 28, 28)
    mask[0, 0, :, :14] = 0.9  # left half of the first box
    det = {
        "boxes": torch.tensor([[40.0, 20.0, 120.0, 100.0], [250.0, 150.0, 330.0, 230.0]]),
        "labels": torch.tensor([1, 2]),
        "scores": torch.tensor([0.9, 0.8]),
        "masks": mask,
    }
    (out,) = paste_detections([det], scales=[2.0], original_sizes=[(100, 150)])
    # Second box is clipped to the 150x100 original: x2 = min(165, 150), y2 = min(115, 100).
    torch.testing.assert_close(
        out["boxes"], torch.tensor([[20.0, 10.0, 60.0, 50.0], [125.0, 75.0, 150.0, 100.0]])
    )
    assert out["labels"].tolist() == [1, 2] and out["scores"].tolist() == pytest.approx([0.9, 0.8])
    assert out["masks"].shape == (2, 100, 150) and out["masks"].dtype == torch.bool
    m = out["masks"][0]
    assert m[10:50, 20:39].all()  # left half of the box [20, 60) x [10, 50)
    assert not m[:, 42:].any() and not m[:9].any() and not m[52:].any()
    assert not out["masks"][1].any()
    # Input is not modified.
    assert det["boxes"][1, 2] == 330.0 and det["masks"].dtype == torch.float32


def test_paste_detections_without_masks_and_empty(fake_backbone):
    empty = {
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.int64),
        "scores": torch.zeros(0),
        "masks": torch.zeros(0, 1, 28, 28),
    }
    boxes_only = {k: v for k, v in empty.items() if k != "masks"}
    out = paste_detections([empty, boxes_only], [0.5, 1.0], [(50, 60), (224, 224)])
    assert out[0]["masks"].shape == (0, 50, 60)
    assert "masks" not in out[1]
    with pytest.raises(ValueError, match="2 detections, 1 scales"):
        paste_detections([empty, boxes_only], [1.0], [(1, 1), (1, 1)])


def test_mask_rcnn_end_to_end_paste(fake_backbone):
    model = MaskRCNN(backbone=fake_backbone, num_classes=2, **SMALL).eval()
    with torch.no_grad():
        dets = model(torch.rand(2, 3, 224, 224), [(224, 224), (168, 224)])
    out = paste_detections(dets, [224 / 300, 168 / 200], [(300, 300), (200, 267)])
    for o, (h, w) in zip(out, [(300, 300), (200, 267)]):
        assert o["masks"].shape == (o["boxes"].shape[0], h, w)
        if len(o["boxes"]):
            assert o["boxes"][:, 2].max() <= w and o["boxes"][:, 3].max() <= h
