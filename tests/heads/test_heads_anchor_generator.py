import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

from vitdense.heads.anchor_generator import StrideAnchorGenerator, default_anchor_sizes

STRIDES = [3.5, 7.0, 14.0, 28.0, 56.0]
RATIOS = [[0.5, 1.0, 2.0]] * 5


def _inputs(h: int, w: int, strides=STRIDES, batch: int = 2):
    images = ImageList(torch.zeros(batch, 3, h, w), [(h, w)] * batch)
    fmaps = [torch.zeros(batch, 1, round(h / s), round(w / s)) for s in strides]
    return images, fmaps


def test_default_sizes_follow_strides():
    assert default_anchor_sizes(STRIDES) == [[28.0], [56.0], [112.0], [224.0], [448.0]]


@pytest.mark.parametrize("hw", [(224, 336), (1008, 1008)])
def test_centres_are_cell_centres_on_every_level(hw):
    h, w = hw
    gen = StrideAnchorGenerator(default_anchor_sizes(STRIDES), RATIOS, STRIDES)
    images, fmaps = _inputs(h, w)
    anchors = gen(images, fmaps)
    assert len(anchors) == 2
    per_level = [round(h / s) * round(w / s) * 3 for s in STRIDES]
    assert anchors[0].shape == (sum(per_level), 4)
    for chunk, stride, size in zip(anchors[0].split(per_level), STRIDES, default_anchor_sizes(STRIDES)):
        gh, gw = round(h / stride), round(w / stride)
        grid = chunk.view(gh, gw, 3, 4).double()
        cx = (grid[..., 0] + grid[..., 2]) / 2
        cy = (grid[..., 1] + grid[..., 3]) / 2
        expect_x = (torch.arange(gw, dtype=torch.float64) + 0.5) * stride
        expect_y = (torch.arange(gh, dtype=torch.float64) + 0.5) * stride
        torch.testing.assert_close(cx, expect_x[None, :, None].expand_as(cx), rtol=0, atol=1e-4)
        torch.testing.assert_close(cy, expect_y[:, None, None].expand_as(cy), rtol=0, atol=1e-4)
        # The grid spans the whole padded image: first centre s/2, last centre W - s/2.
        assert cx.min().item() == pytest.approx(stride / 2)
        assert cx.max().item() == pytest.approx(w - stride / 2)
        assert cy.max().item() == pytest.approx(h - stride / 2)
        # Sizes are exact (no rounding): area size**2, height / width = ratio.
        wh = grid[..., 2:] - grid[..., :2]
        torch.testing.assert_close(
            wh[..., 0] * wh[..., 1], torch.full_like(cx, size[0] ** 2), rtol=1e-5, atol=0
        )
        torch.testing.assert_close(
            (wh[..., 1] / wh[..., 0])[0, 0],
            torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64),
            rtol=1e-5,
            atol=0,
        )


def test_torchvision_anchor_generator_misses_lower_right_of_p2():
    """The trap this module exists for: torchvision computes p2's stride as 1008 // 288 = 3, not 3.5."""
    h = w = 1008
    images, fmaps = _inputs(h, w, batch=1)
    ours = StrideAnchorGenerator(default_anchor_sizes(STRIDES), RATIOS, STRIDES)(images, fmaps)[0]
    tv = AnchorGenerator(tuple((s[0],) for s in default_anchor_sizes(STRIDES)), ((0.5, 1.0, 2.0),) * 5)
    theirs = tv(images, fmaps)[0]
    n_p2 = 288 * 288 * 3
    ours_cx = (ours[:n_p2, 0] + ours[:n_p2, 2]) / 2
    theirs_cx = (theirs[:n_p2, 0] + theirs[:n_p2, 2]) / 2
    assert ours_cx.max().item() == pytest.approx(w - 1.75)
    # torchvision's last p2 centre is at 287 * 3 = 861: the last 147 px get no small anchors.
    assert theirs_cx.max().item() == pytest.approx(861.0)


def test_num_anchors_per_location():
    gen = StrideAnchorGenerator([[28.0, 40.0]] * 5, RATIOS, STRIDES)
    assert gen.num_anchors_per_location() == [6] * 5


def test_size_mismatch_says_how_to_pad():
    gen = StrideAnchorGenerator(default_anchor_sizes(STRIDES), RATIOS, STRIDES)
    images = ImageList(torch.zeros(1, 3, 224, 230), [(224, 230)])
    fmaps = [torch.zeros(1, 1, 224 // int(s * 2) * 2, 230 // int(s * 2) * 2) for s in STRIDES]
    with pytest.raises(ValueError, match="pad the image to a multiple of the largest stride \\(56\\)"):
        gen(images, fmaps)


def test_level_count_mismatch():
    gen = StrideAnchorGenerator(default_anchor_sizes(STRIDES), RATIOS, STRIDES)
    images, fmaps = _inputs(224, 224)
    with pytest.raises(ValueError, match="4 feature maps for 5 anchor levels"):
        gen(images, fmaps[:4])


def test_anchors_of_a_canvas_are_computed_once_and_equal_a_fresh_computation(monkeypatch):
    gen = StrideAnchorGenerator(default_anchor_sizes(STRIDES), RATIOS, STRIDES)
    first = gen(*_inputs(224, 224))[0]
    calls = []
    grid_anchors = gen.grid_anchors
    monkeypatch.setattr(gen, "grid_anchors", lambda *args: calls.append(args) or grid_anchors(*args))
    assert gen(*_inputs(224, 224, batch=1))[0] is first and calls == []
    other = gen(*_inputs(280, 336))[0]
    assert len(calls) == 1
    fresh = StrideAnchorGenerator(default_anchor_sizes(STRIDES), RATIOS, STRIDES)
    torch.testing.assert_close(other, fresh(*_inputs(280, 336))[0], rtol=0, atol=0)
    # First computed in an evaluation (inference_mode), they remain usable by a training step.
    with torch.inference_mode():
        kept = fresh(*_inputs(224, 224))[0]
    assert not kept.is_inference()
