import pytest
import torch

from tests.helpers import assert_one_cell_covers_its_pixels
from tests.tiny import TINY_CONFIG, TINY_NETWORK
from vitdense.backbones import BirderBackbone, SimpleFeaturePyramid


@pytest.fixture(scope="module")
def pyramid():
    return SimpleFeaturePyramid(BirderBackbone(TINY_NETWORK, config=TINY_CONFIG), out_channels=32).eval()


def test_declared_strides_are_the_true_ones(pyramid):
    assert pyramid.strides == {"p2": 3.5, "p3": 7.0, "p4": 14.0, "p5": 28.0, "p6": 56.0}
    assert pyramid.size_divisibility == 56
    assert pyramid.out_channels == 32


@pytest.mark.parametrize("size", [(224, 224), (112, 336), (1008, 56)])
def test_every_level_stride_equals_image_size_over_feature_size(pyramid, size):
    with torch.no_grad():
        features = pyramid(torch.rand(1, 3, *size))
    assert list(features) == list(pyramid.strides)
    for name, feature in features.items():
        assert feature.shape[:2] == (1, 32)
        assert size[0] / feature.shape[-2] == pyramid.strides[name]
        assert size[1] / feature.shape[-1] == pyramid.strides[name]


def test_levels_are_phase_aligned_with_the_image(pyramid):
    """A response confined to one ViT cell covers exactly that cell's pixels at every level."""
    resamplers = {name: branch[0] for name, branch in pyramid.levels.items()}
    assert_one_cell_covers_its_pixels(resamplers, pyramid.strides, channels=64)


def test_sizes_not_multiple_of_coarsest_stride_are_refused(pyramid):
    with pytest.raises(ValueError, match="multiple of 56"):
        pyramid(torch.rand(1, 3, 210, 224))


def test_subset_of_scales_and_no_top_block():
    pyramid = SimpleFeaturePyramid(
        BirderBackbone(TINY_NETWORK, config=TINY_CONFIG),
        out_channels=16,
        scale_factors=(2.0, 1.0),
        top_block=False,
    )
    assert pyramid.strides == {"p3": 7.0, "p4": 14.0}
    assert pyramid.size_divisibility == 14
    features = pyramid(torch.rand(1, 3, 70, 42))
    assert [tuple(f.shape[-2:]) for f in features.values()] == [(10, 6), (5, 3)]


def test_levels_are_channels_last_without_a_conversion(pyramid):
    # birder turns its (B, N, C) tokens into a (B, C, h, w) view whose channels are innermost, so every
    # pyramid conv, and the RPN and RoI heads after them, run in the channels-last layout that cuDNN's
    # tensor-core kernels prefer, without a copy. A change that made a level NCHW would slow them down.
    vit_map = pyramid.vit(torch.rand(2, 3, 224, 224))
    assert vit_map.stride(1) == 1
    for name, level in pyramid(torch.rand(2, 3, 224, 224)).items():
        assert level.is_contiguous(memory_format=torch.channels_last), name
