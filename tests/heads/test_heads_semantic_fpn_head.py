import pytest
import torch
from torch import nn

from vitdense.heads.semantic_fpn_head import SemanticFPNHead


def test_output_is_at_the_finest_stride(tiny_pyramid):
    head = SemanticFPNHead(5, tiny_pyramid.out_channels, tiny_pyramid.strides, channels=32)
    images = torch.rand(2, 3, 112, 168)
    with torch.no_grad():
        logits = head(tiny_pyramid(images))
    # 112 / 3.5 = 32 and 168 / 3.5 = 48 exactly: the pyramid's p2 stride, not a power of two.
    assert head.stride == 3.5
    assert logits.shape == (2, 5, 112 / 3.5, 168 / 3.5) and logits.dtype == torch.float32


def test_each_level_upsamples_by_its_declared_stride(tiny_pyramid):
    head = SemanticFPNHead(3, tiny_pyramid.out_channels, tiny_pyramid.strides, channels=32)
    features = tiny_pyramid(torch.rand(1, 3, 224, 112))
    for name, scale_head in head.scale_heads.items():
        factor = tiny_pyramid.strides[name] / head.stride
        upsamplings = [m for m in scale_head if isinstance(m, nn.Upsample)]
        convs = [m for m in scale_head if isinstance(m, nn.Conv2d)]
        # Panoptic FPN: one conv stage for p2, otherwise one (conv, x2) stage per octave.
        assert len(upsamplings) == int(factor).bit_length() - 1
        assert len(convs) == max(len(upsamplings), 1)
        out = scale_head(features[name])
        stride = tiny_pyramid.strides[name]
        assert features[name].shape[-2:] == (224 / stride, 112 / stride)
        assert out.shape[-2:] == (224 / 3.5, 112 / 3.5)


def test_default_norm_is_group_norm_and_replaceable(fake_backbone):
    head = SemanticFPNHead(2, 16, fake_backbone.strides, channels=32)
    assert all(m.num_groups == 32 for m in head.modules() if isinstance(m, nn.GroupNorm))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in head.modules())
    bn = SemanticFPNHead(2, 16, fake_backbone.strides, channels=16, norm_layer=nn.BatchNorm2d)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bn.modules()) == 1 + 1 + 2 + 3


def test_subset_of_levels_and_powers_of_two(fake_backbone):
    head = SemanticFPNHead(2, 16, fake_backbone.strides, in_features=("p3", "p4"), channels=32)
    out = head(fake_backbone(torch.rand(1, 3, 112, 112)))
    assert head.stride == 7.0 and out.shape == (1, 2, 16, 16)
    # Any doubling strides work, not only the patch-14 ones.
    strides = {"p2": 4.0, "p3": 8.0, "p4": 16.0}
    assert SemanticFPNHead(2, 16, strides, in_features=("p2", "p3", "p4"), channels=32).stride == 4.0


def test_inconsistent_level_sizes_are_reported(fake_backbone):
    head = SemanticFPNHead(2, 16, fake_backbone.strides, channels=32)
    features = fake_backbone(torch.rand(1, 3, 112, 112))
    features["p5"] = features["p5"][..., :1, :]
    with pytest.raises(ValueError, match="multiple of the coarsest stride"):
        head(features)
