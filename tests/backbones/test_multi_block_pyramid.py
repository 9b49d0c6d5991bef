import pytest
import torch
from birder.layers import LayerNorm2d
from torch import nn
from torch.nn import functional as F

from tests.helpers import assert_one_cell_covers_its_pixels
from tests.tiny import TINY_CONFIG, TINY_NETWORK
from vitdense.backbones import BirderBackbone, MultiBlockPyramid

FOUR_BLOCKS = {**TINY_CONFIG, "num_layers": 4}


@pytest.fixture(scope="module")
def pyramid() -> MultiBlockPyramid:
    torch.manual_seed(0)
    vit = BirderBackbone(TINY_NETWORK, config=FOUR_BLOCKS, out_indices=[0, 1, 2, 3])
    return MultiBlockPyramid(vit).eval()


def test_declared_strides_are_the_true_ones(pyramid):
    assert pyramid.strides == {"p2": 3.5, "p3": 7.0, "p4": 14.0, "p5": 28.0}
    assert pyramid.size_divisibility == 28
    assert pyramid.out_channels == 64  # each block's width, not the 4 x 64 the ViT concatenates


@pytest.mark.parametrize("size", [(56, 56), (112, 168), (224, 56), (84, 140), (532, 532)])
def test_every_level_stride_equals_image_size_over_feature_size(pyramid, size):
    with torch.no_grad():
        features = pyramid(torch.rand(1, 3, *size))
    assert list(features) == ["p2", "p3", "p4", "p5"]
    for name, feature in features.items():
        assert feature.shape[:2] == (1, 64)
        assert size[0] / feature.shape[-2] == pyramid.strides[name]
        assert size[1] / feature.shape[-1] == pyramid.strides[name]


def test_level_k_is_block_k_at_its_scale(pyramid):
    """p4 is the third block's map itself, p5 the fourth's max-pooled 2x2; p2 and p3 are blocks 0 and 1's."""
    images = torch.rand(1, 3, 112, 84)
    with torch.no_grad():
        blocks = pyramid.vit(images).split(64, dim=1)
        features = pyramid(images)
        expected_p2 = pyramid.levels["p2"](blocks[0])
        expected_p3 = pyramid.levels["p3"](blocks[1])
    torch.testing.assert_close(features["p4"], blocks[2], rtol=0, atol=0)
    torch.testing.assert_close(features["p5"], F.max_pool2d(blocks[3], 2), rtol=0, atol=0)
    torch.testing.assert_close(features["p2"], expected_p2, rtol=0, atol=0)
    torch.testing.assert_close(features["p3"], expected_p3, rtol=0, atol=0)
    x4, x2 = pyramid.levels["p2"], pyramid.levels["p3"]
    assert [type(m) for m in x4] == [nn.ConvTranspose2d, LayerNorm2d, nn.GELU, nn.ConvTranspose2d]
    assert all(conv.stride == (2, 2) and conv.kernel_size == (2, 2) for conv in (x4[0], x4[3], x2))
    assert x4[0].out_channels == x4[3].out_channels == x2.out_channels == 64  # the ViT's width kept


def test_the_first_block_only_reaches_the_finest_level():
    """Each level depends on its own block: a change after block 0 leaves p2 as it is."""
    torch.manual_seed(0)
    vit = BirderBackbone(TINY_NETWORK, config=FOUR_BLOCKS, out_indices=[0, 1, 2, 3])
    pyramid = MultiBlockPyramid(vit).eval()
    images = torch.rand(1, 3, 56, 56)
    with torch.no_grad():
        before = pyramid(images)
        for param in vit.net.encoder.block[3].parameters():
            param.add_(0.5)
        after = pyramid(images)
    torch.testing.assert_close(after["p2"], before["p2"], rtol=0, atol=0)
    assert not torch.allclose(after["p5"], before["p5"])


def test_levels_are_phase_aligned_with_the_image(pyramid):
    """A response confined to one ViT cell covers exactly that cell's pixels at every level."""
    assert_one_cell_covers_its_pixels(pyramid.levels, pyramid.strides, channels=64)


def test_sizes_not_multiple_of_the_coarsest_stride_are_refused(pyramid):
    with pytest.raises(ValueError, match=r"multiple of 28 .* e.g. 532x532"):
        pyramid(torch.rand(1, 3, 518, 518))  # 37 x 14: p5 would drop the last half-cell


def test_one_block_per_level_is_required():
    vit = BirderBackbone(TINY_NETWORK, config=FOUR_BLOCKS)
    with pytest.raises(ValueError, match=r"give BirderBackbone out_indices with 4 blocks"):
        MultiBlockPyramid(vit)
    vit = BirderBackbone(TINY_NETWORK, config=FOUR_BLOCKS, out_indices=[2, 3])
    with pytest.raises(ValueError, match="returns blocks \\[2, 3\\]"):
        MultiBlockPyramid(vit)
    with pytest.raises(ValueError, match="fine to coarse"):
        MultiBlockPyramid(vit, scale_factors=(1.0, 2.0))


def test_a_subset_of_scales_with_its_blocks():
    vit = BirderBackbone(TINY_NETWORK, config=FOUR_BLOCKS, out_indices=[1, 3])
    pyramid = MultiBlockPyramid(vit, scale_factors=(2.0, 1.0))
    assert pyramid.strides == {"p3": 7.0, "p4": 14.0} and pyramid.size_divisibility == 14
    with torch.no_grad():
        features = pyramid(torch.rand(1, 3, 42, 70))
    assert {name: tuple(f.shape[-2:]) for name, f in features.items()} == {"p3": (6, 10), "p4": (3, 5)}
