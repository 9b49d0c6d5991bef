"""`paste_masks` against a whole-image `grid_sample` reference (detectron2's pasting, one mask at a time).

The reference samples every mask at every pixel centre in float64; `paste_masks` samples only near each box,
in float32 (bf16 / fp16: rounded to their dtype at the end). Bool masks may differ only where the reference
probability is within the float tolerance of the threshold.
"""

import pytest
import torch
import torch.nn.functional as F

from vitdense.heads import mask_paste
from vitdense.heads.mask_paste import _chunks, _write_rows, paste_masks

SIZES = [(100, 120), (37, 211), (480, 640), (1, 5), (211, 37)]


def _cases(num: int, size: tuple[int, int], gen: torch.Generator, dtype: torch.dtype = torch.float32):
    """Masks crowded around 0.5 and boxes from 0.1 px to twice the image, reaching up to 20 px past its left
    and top edges and as far as they like past its right and bottom ones, but never wholly outside it
    (torchvision's pasting raised for many of those)."""
    h, w = size
    masks = (torch.rand(num, 1, 28, 28, generator=gen) * 0.2 + 0.4).to(dtype)
    xy = torch.rand(num, 2, generator=gen) * torch.tensor([w + 20.0, h + 20.0]) - 20
    wh = torch.exp(torch.rand(num, 2, generator=gen) * (torch.tensor([2.0 * w, 2.0 * h]).log() + 2.3) - 2.3)
    boxes = torch.cat([xy, xy + wh], 1)
    boxes[:, 2:] = torch.max(boxes[:, 2:], torch.zeros(2))  # x2, y2 >= 0
    return masks, boxes


def _reference(masks: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, h, w) float64 probabilities: each pixel centre mapped into its box's [-1, 1] grid_sample frame."""
    h, w = size
    boxes = boxes.double()
    xs = (torch.arange(w, dtype=torch.float64) + 0.5 - boxes[:, :1]) / (boxes[:, 2:3] - boxes[:, :1]) * 2 - 1
    ys = (torch.arange(h, dtype=torch.float64) + 0.5 - boxes[:, 1:2]) / (
        boxes[:, 3:4] - boxes[:, 1:2]
    ) * 2 - 1
    grid = torch.stack([xs[:, None, :].expand(-1, h, -1), ys[:, :, None].expand(-1, -1, w)], -1)
    return F.grid_sample(masks.double(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)[
        :, 0
    ]


def _assert_same(ours: torch.Tensor, reference: torch.Tensor, threshold: float, tolerance: float) -> int:
    """Equal bool masks except where the reference probability is within `tolerance` of the threshold."""
    expected = reference > threshold
    assert ours.dtype == torch.bool and ours.shape == expected.shape
    differ = ours != expected
    near = (reference.double() - threshold).abs() <= tolerance
    assert not (differ & ~near).any(), f"{int((differ & ~near).sum())} pixels differ away from the threshold"
    return int(differ.sum())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("size", SIZES)
def test_matches_grid_sample_at_pixel_centres(size, dtype):
    gen = torch.Generator().manual_seed(sum(size))
    masks, boxes = _cases(40, size, gen, dtype)
    reference = _reference(masks, boxes, size)
    probabilities = paste_masks(masks, boxes.to(dtype), size, threshold=None)
    assert probabilities.dtype == dtype
    torch.testing.assert_close(probabilities.double(), reference, rtol=0, atol=1e-6)
    for threshold in (0.5, 0.45, 0.0):
        ours = paste_masks(masks, boxes.to(dtype), size, threshold=threshold)
        _assert_same(ours, reference, threshold, tolerance=1e-5)


def test_chunks_do_not_change_the_result():
    gen = torch.Generator().manual_seed(3)
    masks, boxes = _cases(30, (200, 150), gen)
    whole = paste_masks(masks, boxes, (200, 150), threshold=None, chunk_elements=2**30)
    for budget in (500, 1):
        torch.testing.assert_close(
            paste_masks(masks, boxes, (200, 150), threshold=None, chunk_elements=budget), whole
        )
        assert torch.equal(paste_masks(masks, boxes, (200, 150), chunk_elements=budget), whole > 0.5)


@pytest.mark.parametrize(("budget", "min_fill"), [(10**9, 0.0), (10**9, 0.5), (2000, 0.0), (1, 0.5)])
def test_chunks_cover_each_box_once_within_budget(budget, min_fill):
    gen = torch.Generator().manual_seed(5)
    sizes = torch.randint(0, 120, (60, 2), generator=gen).tolist()
    chunks = _chunks(sizes, budget, min_fill)
    members = sorted(i for chunk, _, _ in chunks for i in chunk)
    assert members == [i for i, (h, w) in enumerate(sizes) if h > 0 and w > 0]
    for chunk, rows, width in chunks:
        assert rows == sum(sizes[i][0] for i in chunk) and width == max(sizes[i][1] for i in chunk)
        assert rows * width <= budget or len(chunk) == 1
        assert all(sizes[i][1] >= min_fill * width for i in chunk)
    if budget > 10**8 and min_fill == 0:
        assert len(chunks) == 1


def test_edge_boxes():
    h, w = 60, 90
    boxes = torch.tensor(
        [
            [10.0, 10.0, 10.3, 10.2],  # under a pixel
            [40.0, 20.0, 40.0, 20.0],  # zero size
            [-500.0, -300.0, 2000.0, 1500.0],  # far larger than the image
            [-5.0, -7.0, 20.0, 15.0],  # over the top-left corner
            [80.0, 50.0, 130.0, 75.0],  # over the bottom-right corner
        ]
    )
    masks = torch.rand(len(boxes), 1, 28, 28, generator=torch.Generator().manual_seed(0))
    reference = torch.nan_to_num(_reference(masks, boxes, (h, w)))  # the zero-size box: 0 / 0
    torch.testing.assert_close(
        paste_masks(masks, boxes, (h, w), threshold=None).double(), reference, rtol=0, atol=1e-6
    )
    _assert_same(paste_masks(masks, boxes, (h, w)), reference, 0.5, tolerance=1e-5)
    assert paste_masks(masks, boxes, (h, w))[2].float().mean() > 0.3  # the huge box covers the image


def test_boxes_outside_the_image_paste_nothing():
    # torchvision's pasting raised for each of these (a negative slice end wraps around); they paste nothing.
    boxes = torch.tensor(
        [
            [-50.0, 5.0, -20.0, 30.0],  # left
            [5.0, -40.0, 30.0, -10.0],  # above
            [-12.0, -12.0, -3.0, -3.0],  # above left
            [60.0, 5.0, 150.0, 30.0],  # right
            [5.0, 45.0, 30.0, 90.0],  # below
            [55.0, 5.0, 70.0, 30.0],  # right
            [5.0, 45.0, 30.0, 60.0],  # below
        ]
    )
    masks = torch.ones(len(boxes), 1, 28, 28)
    assert not paste_masks(masks, boxes, (40, 50)).any()
    assert not paste_masks(masks, boxes, (40, 50), threshold=None).any()


def test_boxes_with_non_finite_coordinates_paste_nothing():
    # A diverged model can decode inf or NaN boxes; they paste nothing and leave the other masks alone.
    inf, nan = float("inf"), float("nan")
    boxes = torch.tensor(
        [
            [-inf, 5.0, 30.0, 30.0],
            [5.0, -inf, 30.0, 30.0],
            [5.0, 5.0, inf, 30.0],
            [-inf, -inf, inf, inf],
            [nan, 5.0, 30.0, 30.0],
            [5.0, 5.0, 30.0, nan],
            [2.0, 3.0, 12.0, 9.0],
        ]
    )
    masks = torch.ones(len(boxes), 1, 28, 28)
    for threshold in (0.5, None):
        out = paste_masks(masks, boxes, (40, 50), threshold=threshold)
        assert not out[:-1].any()
        assert out[-1].bool().equal(paste_masks(masks[-1:], boxes[-1:], (40, 50))[0])
        assert out[-1].sum() == 60


def test_empty_and_degenerate_sizes():
    out = paste_masks(torch.zeros(0, 1, 28, 28, dtype=torch.bfloat16), torch.zeros(0, 4), (30, 40))
    assert out.shape == (0, 30, 40) and out.dtype == torch.bool
    out = paste_masks(
        torch.zeros(0, 1, 28, 28, dtype=torch.bfloat16), torch.zeros(0, 4), (30, 40), threshold=None
    )
    assert out.shape == (0, 30, 40) and out.dtype == torch.bfloat16
    assert paste_masks(torch.ones(2, 1, 28, 28), torch.tensor([[0.0, 0, 5, 5]] * 2), (0, 7)).shape == (
        2,
        0,
        7,
    )


def test_rejects_bad_inputs():
    with pytest.raises(ValueError, match="threshold must be >= 0"):
        paste_masks(torch.ones(1, 1, 28, 28), torch.tensor([[0.0, 0, 5, 5]]), (10, 10), threshold=-0.1)
    with pytest.raises(ValueError, match=r"expected masks \(N, 1, M, M\)"):
        paste_masks(torch.ones(1, 28, 28), torch.tensor([[0.0, 0, 5, 5]]), (10, 10))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_matches_the_reference_to_one_ulp(dtype):
    gen = torch.Generator().manual_seed(7)
    ulp = 2.0**-8 if dtype == torch.bfloat16 else 2.0**-11  # at 0.5
    for size in SIZES:
        masks, boxes = _cases(30, size, gen, dtype)
        reference = _reference(masks, boxes, size)
        probabilities = paste_masks(masks, boxes, size, threshold=None)
        assert probabilities.dtype == dtype
        torch.testing.assert_close(probabilities.double(), reference, rtol=0, atol=ulp)
        _assert_same(paste_masks(masks, boxes, size), reference, 0.5, tolerance=ulp)


def test_row_writes_with_and_without_windows():
    first = torch.tensor([0, 13, 40, 27])
    rows = torch.rand(4, 6)
    windowed, indexed = torch.zeros(50), torch.zeros(50)
    _write_rows(windowed, first, rows, windowed=True)
    _write_rows(indexed, first, rows, windowed=False)
    assert torch.equal(windowed, indexed) and torch.equal(windowed[40:46], rows[2])


def test_the_gpu_layout_matches_the_reference_on_the_cpu(monkeypatch):
    # What runs on a GPU (large chunks of any widths, per-pixel row writes), checked where tests run.
    monkeypatch.setattr(mask_paste, "_layout", lambda device: (2**24, 0.0, False))
    gen = torch.Generator().manual_seed(5)
    for size in SIZES:
        masks, boxes = _cases(40, size, gen)
        reference = _reference(masks, boxes, size)
        torch.testing.assert_close(
            paste_masks(masks, boxes, size, threshold=None).double(), reference, rtol=0, atol=1e-6
        )
        _assert_same(paste_masks(masks, boxes, size), reference, 0.5, tolerance=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_the_reference(dtype):
    gen = torch.Generator().manual_seed(11)
    tolerance = 1e-5 if dtype == torch.float32 else 2.0**-8
    for size in SIZES:
        masks, boxes = _cases(40, size, gen, dtype)
        masks, boxes = masks.cuda(), boxes.cuda()
        ours = paste_masks(masks, boxes, size)
        assert ours.is_cuda
        _assert_same(ours.cpu(), _reference(masks.cpu(), boxes.cpu(), size), 0.5, tolerance=tolerance)


@pytest.mark.parametrize("box", [(10, 10, 18, 18), (20, 30, 60, 50), (5, 7, 105, 207), (3, 4, 5, 5)])
def test_an_all_ones_mask_pastes_back_onto_its_box(box):
    # Pixels whose centres lie inside the box are foreground and no others, except in the corners, where
    # the two edges' blends with the zero padding (within half a mask bin of each edge) multiply (0.8 x 0.6
    # < 0.5). torchvision's pasting grew an 8 x 8 square to 10 x 10.
    x1, y1, x2, y2 = box
    pasted = paste_masks(torch.ones(1, 1, 28, 28), torch.tensor([box], dtype=torch.float32), (240, 240))[0]
    expected = torch.zeros(240, 240, dtype=torch.bool)
    expected[y1:y2, x1:x2] = True
    assert not pasted[~expected].any()
    half_bin_x, half_bin_y = (x2 - x1) / 56, (y2 - y1) / 56
    for y, x in (pasted != expected).nonzero().tolist():
        assert min(x + 0.5 - x1, x2 - x - 0.5) < half_bin_x and min(y + 0.5 - y1, y2 - y - 0.5) < half_bin_y
