import math
from collections import OrderedDict

import pytest
import torch
import torchvision

from vitdense.heads.roi_align import ExactMultiScaleRoIAlign, roi_align, roi_align_gather

NAMES = ["p2", "p3", "p4", "p5"]
STRIDES = [3.5, 7.0, 14.0, 28.0]


def _random_rois(
    n: int, batch: int, extent: float, gen: torch.Generator, dtype=torch.float64
) -> torch.Tensor:
    # Boxes from 0.2 px to ~60 px, starting up to 15 px outside the map on every side.
    xy = torch.rand(n, 2, generator=gen, dtype=dtype) * (extent + 30) - 15
    wh = torch.rand(n, 2, generator=gen, dtype=dtype) ** 2 * 60 + 0.2
    idx = torch.randint(0, batch, (n, 1), generator=gen).to(dtype)
    return torch.cat([idx, xy, xy + wh], dim=1)


@pytest.mark.parametrize("scale", [1 / 3.5, 1 / 7, 0.25, 1.0])
@pytest.mark.parametrize(("output_size", "sampling_ratio"), [(7, 2), ((5, 3), 1), (4, 3)])
def test_gather_matches_torchvision_forward_and_backward(scale, output_size, sampling_ratio):
    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(2, 3, 11, 17, generator=gen, dtype=torch.float64, requires_grad=True)
    extent = 17 / scale
    rois = _random_rois(150, 2, extent, gen)
    ours = roi_align_gather(feats, rois, output_size, scale, sampling_ratio)
    theirs = torchvision.ops.roi_align(feats, rois, output_size, scale, sampling_ratio, aligned=True)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
    grad_out = torch.randn(ours.shape, generator=gen, dtype=torch.float64)
    (g_ours,) = torch.autograd.grad(ours, feats, grad_out)
    (g_theirs,) = torch.autograd.grad(theirs, feats, grad_out)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-10, atol=1e-10)


def test_gather_matches_torchvision_float32():
    gen = torch.Generator().manual_seed(2)
    feats = torch.randn(2, 8, 32, 32, generator=gen, requires_grad=True)
    rois = _random_rois(64, 2, 112.0, gen, dtype=torch.float32)
    ours = roi_align_gather(feats, rois, 7, 1 / 3.5, 2)
    theirs = torchvision.ops.roi_align(feats, rois, 7, 1 / 3.5, 2, aligned=True)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    (g_ours,) = torch.autograd.grad(ours.square().sum(), feats)
    (g_theirs,) = torch.autograd.grad(theirs.square().sum(), feats)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-4, atol=1e-4)


def test_samples_outside_the_map_follow_torchvision_rules():
    # A box entirely beyond y > H reads zeros; one straddling y = -1 reads row 0 for its samples in [-1, 0)
    # and 0 for those below -1.
    feats = torch.arange(1.0, 17.0, dtype=torch.float64).view(1, 1, 4, 4)
    rois = torch.tensor([[0, 0.0, 10.0, 4.0, 14.0], [0, 0.0, -0.9, 4.0, -0.1]], dtype=torch.float64)
    ours = roi_align_gather(feats, rois, 2, 1.0, 2)
    theirs = torchvision.ops.roi_align(feats, rois, 2, 1.0, 2, aligned=True)
    torch.testing.assert_close(ours, theirs)
    assert ours[0].abs().sum() == 0
    assert ours[1].abs().sum() > 0


def test_cpu_dispatch_and_edge_cases():
    feats = torch.randn(1, 2, 8, 8)
    rois = torch.tensor([[0, 1.0, 1.0, 20.0, 9.0]])
    torch.testing.assert_close(roi_align(feats, rois, 3, 0.25, 2), roi_align_gather(feats, rois, 3, 0.25, 2))
    assert roi_align(feats, rois[:0], 3, 0.25, 2).shape == (0, 2, 3, 3)
    # No RoIs still gives an output connected to the map, as torchvision's (a zero gradient).
    feats.requires_grad_(True)
    roi_align_gather(feats, rois[:0], 3, 0.25, 2).sum().backward()
    assert feats.grad is not None and feats.grad.abs().sum() == 0
    with pytest.raises(ValueError, match="sampling_ratio > 0"):
        roi_align(feats, rois, 3, 0.25, 0)


def _ramp_pyramid(canvas: int) -> "OrderedDict[str, torch.Tensor]":
    """Per level, channel 0 holds the image x of each cell centre, channel 1 its image y."""
    maps = OrderedDict()
    for name, s in zip(NAMES, STRIDES):
        n = round(canvas / s)
        centres = (torch.arange(n, dtype=torch.float64) + 0.5) * s
        maps[name] = torch.stack([centres[None, :].expand(n, n), centres[:, None].expand(n, n)])[None]
    return maps


def test_box_over_ramp_returns_bin_centres_on_every_level():
    """RoIAlignV2 over a linear map is exact: each bin returns the image position of its centre."""
    canvas = 896
    maps = _ramp_pyramid(canvas)
    # Sides 60, 120, 240, 480 px go to p2, p3, p4, p5; all samples stay inside the maps (no clamping).
    boxes = torch.tensor(
        [
            [401.3, 377.9, 461.3, 437.9],
            [233.7, 301.1, 353.7, 421.1],
            [150.2, 99.9, 390.2, 339.9],
            [200.0, 210.5, 680.0, 690.5],
        ],
        dtype=torch.float64,
    )
    pooler = ExactMultiScaleRoIAlign(NAMES, STRIDES, 7)
    assert pooler.assign_levels([boxes]).tolist() == [0, 1, 2, 3]
    pooled = pooler(maps, [boxes], [(canvas, canvas)])
    bins = (torch.arange(7, dtype=torch.float64) + 0.5) / 7
    expect_x = boxes[:, 0:1] + bins[None] * (boxes[:, 2:3] - boxes[:, 0:1])  # (4, 7)
    expect_y = boxes[:, 1:2] + bins[None] * (boxes[:, 3:4] - boxes[:, 1:2])
    torch.testing.assert_close(pooled[:, 0], expect_x[:, None, :].expand(4, 7, 7), rtol=0, atol=1e-9)
    torch.testing.assert_close(pooled[:, 1], expect_y[:, :, None].expand(4, 7, 7), rtol=0, atol=1e-9)

    # torchvision rounds p2's scale 1/3.5 to 1/4 (and pools with aligned=False): the p2 box lands ~60 px off.
    tv = torchvision.ops.MultiScaleRoIAlign(NAMES, 7, 2)
    tv_pooled = tv(maps, [boxes], [(canvas, canvas)])
    assert tv.scales[0] == 0.25
    assert (tv_pooled[0, 0] - expect_x[0][None, :]).abs().min() > 40


@pytest.mark.parametrize("kernel", ["gather", "torchvision"])
def test_bf16_maps_are_sampled_where_float32_maps_are(kernel, monkeypatch):
    """Under bf16 autocast the pyramid is bf16, but boxes, sample positions and sums stay float32: bf16
    would put a corner past 512 px on a multiple of 4, moving 4 px bins by up to 3 px."""
    if kernel == "torchvision":  # the kernel used off the CPU (and under torch.export), here on the CPU
        monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    gen = torch.Generator().manual_seed(0)
    maps = OrderedDict(
        (n, torch.randn(1, 8, round(1008 / s), round(1008 / s), generator=gen).to(torch.bfloat16))
        for n, s in zip(NAMES, STRIDES)
    )
    xy = torch.rand(64, 2, generator=gen) * 500 + 500
    boxes = torch.cat([xy, xy + torch.rand(64, 2, generator=gen) * 400 + 20], dim=1)
    pooler = ExactMultiScaleRoIAlign(NAMES, STRIDES, 7)
    pooled = pooler(maps, [boxes], [(1008, 1008)])
    in_float32 = pooler(OrderedDict((n, m.float()) for n, m in maps.items()), [boxes], [(1008, 1008)])
    assert pooled.dtype == torch.bfloat16
    assert torch.equal(pooled, in_float32.to(torch.bfloat16))


def test_level_assignment_matches_formula():
    pooler = ExactMultiScaleRoIAlign(NAMES, STRIDES, 7)
    sides = [1.0, 20.0, 55.9, 56.0, 111.9, 112.0, 223.0, 224.0, 447.0, 448.0, 1000.0, 5000.0]
    boxes = torch.tensor([[10.0, 10.0, 10.0 + s, 10.0 + s] for s in sides])
    # A non-square box assigned by sqrt(area): 112 x 448 has side 224 -> p4.
    boxes = torch.cat([boxes, torch.tensor([[0.0, 0.0, 112.0, 448.0]])])
    levels = pooler.assign_levels([boxes[:5], boxes[5:]])
    expected = [min(max(math.floor(4 + math.log2(s / 224 + 1e-8)), 2), 5) - 2 for s in sides + [224.0]]
    assert levels.tolist() == expected
    assert expected[5:10] == [1, 1, 2, 2, 3]  # 112 -> p3, 224 -> p4, 448 -> p5


def test_pooler_ignores_extra_levels_and_checks_declaration():
    pooler = ExactMultiScaleRoIAlign(NAMES, STRIDES, (7, 7))
    maps = _ramp_pyramid(224)
    maps["p6"] = torch.zeros(1, 2, 4, 4, dtype=torch.float64)
    out = pooler(maps, [torch.tensor([[10.0, 10.0, 50.0, 50.0]], dtype=torch.float64)], [(224, 224)])
    assert out.shape == (1, 2, 7, 7)
    assert pooler(maps, [torch.zeros(0, 4, dtype=torch.float64)], [(224, 224)]).shape == (0, 2, 7, 7)
    with pytest.raises(KeyError, match="p5"):
        pooler({k: v for k, v in maps.items() if k != "p5"}, [torch.zeros(1, 4)], [(224, 224)])
    with pytest.raises(ValueError, match="double"):
        ExactMultiScaleRoIAlign(NAMES, [3.5, 7.0, 16.0, 32.0], 7)


def test_pooler_gradient_reaches_every_level():
    maps = OrderedDict(
        (n, torch.randn(1, 4, round(224 / s), round(224 / s), requires_grad=True))
        for n, s in zip(NAMES, STRIDES)
    )
    boxes = torch.tensor([[0.0, 0.0, 40.0, 40.0], [0.0, 0.0, 120.0, 120.0], [0.0, 0.0, 224.0, 224.0]])
    boxes = torch.cat([boxes, torch.tensor([[0.0, 0.0, 224.0, 224.0]]) * 2.2])
    ExactMultiScaleRoIAlign(NAMES, STRIDES, 7)(maps, [boxes], [(224, 224)]).sum().backward()
    assert all(m.grad is not None and m.grad.abs().sum() > 0 for m in maps.values())
