import pytest
import torch
from torch import nn

from vitdense.heads.pyramid_pooling import PyramidPoolingModule


def _identity_branches(in_channels: int, pool_scales: tuple[int, ...]) -> PyramidPoolingModule:
    """Branches whose conv passes channels through and whose norm and ReLU do nothing to positive inputs."""
    module = PyramidPoolingModule(in_channels, in_channels, pool_scales, norm_layer=lambda c: nn.Identity())
    with torch.no_grad():
        for branch in module.branches:
            branch[1][0].weight.copy_(torch.eye(in_channels)[:, :, None, None])
    return module


@pytest.mark.parametrize("size", [(18, 18), (19, 19), (5, 7), (2, 3), (37, 26)])
def test_output_keeps_the_grid_on_divisible_and_non_divisible_grids(size):
    module = PyramidPoolingModule(8, 4, (1, 2, 3, 6), norm_layer=nn.BatchNorm2d).eval()
    x = torch.rand(2, 8, *size)
    out = module(x)
    assert module.out_channels == 8 + 4 * 4
    assert out.shape == (2, 24, *size)
    torch.testing.assert_close(out[:, :8], x, rtol=0, atol=0)  # the input comes first, unchanged


def test_pooling_bins_overlap_where_the_scale_does_not_divide_the_grid():
    """mmseg's AdaptiveAvgPool2d: 2 bins over 5 columns are [0, 3) and [2, 5); 1 bin is the global mean."""
    module = _identity_branches(1, (1, 2))
    x = (torch.arange(5.0) + 1.0).expand(1, 1, 2, 5)  # two equal rows of columns 1 ... 5
    pooled = [branch(x) for branch in module.branches]
    torch.testing.assert_close(pooled[0], torch.tensor([[[[3.0]]]]))
    torch.testing.assert_close(pooled[1][0, 0], torch.tensor([[2.0, 4.0]] * 2))  # means of 1,2,3 and 3,4,5
    out = module(x)
    torch.testing.assert_close(out[0, 1], torch.full((2, 5), 3.0))  # the global mean spread everywhere
    # Upsampled with align_corners=False: column x samples bin (x + 0.5) * 2 / 5 - 0.5, clamped to [0, 1].
    torch.testing.assert_close(out[0, 2], torch.tensor([[2.0, 2.2, 3.0, 3.8, 4.0]] * 2))


def test_a_grid_smaller_than_the_pool_scale_works():
    module = _identity_branches(2, (6,))
    x = torch.rand(1, 2, 2, 3)
    torch.testing.assert_close(module(x)[:, 2:], x)  # 6 x 6 bins of single cells, sampled back exactly


def test_pool_scales_are_checked():
    with pytest.raises(ValueError, match="positive grid sides"):
        PyramidPoolingModule(8, 4, (0, 2))
    with pytest.raises(ValueError, match="positive grid sides"):
        PyramidPoolingModule(8, 4, ())
