import pytest
import torch
from torch import nn

from vitdense.heads.pyramid_pooling import PyramidPoolingModule
from vitdense.heads.upernet_head import UperNetHead


@pytest.mark.parametrize("size", [(56, 56), (112, 168), (224, 56)])
def test_output_is_at_the_finest_stride(fake_backbone, size):
    head = UperNetHead(5, 16, fake_backbone.strides, channels=32).eval()
    with torch.no_grad():
        logits = head(fake_backbone(torch.rand(2, 3, *size)))
    # The p2 stride 3.5, not a power of two: 56 / 3.5 = 16 cells.
    assert head.stride == 3.5
    assert logits.shape == (2, 5, size[0] / 3.5, size[1] / 3.5) and logits.dtype == torch.float32


def test_mmseg_layout_and_default_width(fake_backbone):
    head = UperNetHead(150, 16, fake_backbone.strides)
    assert isinstance(head.pyramid_pooling, PyramidPoolingModule)
    assert [branch[0].output_size for branch in head.pyramid_pooling.branches] == [1, 2, 3, 6]
    assert head.bottleneck[0].in_channels == 16 + 4 * 512 and head.bottleneck[0].kernel_size == (3, 3)
    assert len(head.lateral_convs) == len(head.output_convs) == 3  # p2, p3, p4; p5 takes the pooling
    assert all(conv[0].kernel_size == (1, 1) and conv[0].out_channels == 512 for conv in head.lateral_convs)
    assert all(conv[0].kernel_size == (3, 3) for conv in head.output_convs)
    assert head.fusion[0].in_channels == 4 * 512 and head.fusion[0].kernel_size == (3, 3)
    assert head.classifier.in_channels == 512 and head.classifier.out_channels == 150
    assert isinstance(head.dropout, nn.Dropout2d) and head.dropout.p == 0.1
    # GroupNorm(32) after every conv by default; replaceable (mmseg: SyncBN).
    norms = [m for m in head.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 4 + 1 + 3 + 3 + 1 and all(norm.num_groups == 32 for norm in norms)
    bn = UperNetHead(2, 16, fake_backbone.strides, channels=32, norm_layer=nn.BatchNorm2d)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bn.modules()) == 12
    assert not any(isinstance(m, nn.GroupNorm) for m in bn.modules())


def test_global_context_reaches_every_cell(fake_backbone):
    """A change in one corner of p5 changes the logits everywhere, through the pooling's 1 x 1 branch."""
    # 64 channels: GroupNorm(32) normalises the 1 x 1 map of one image over 2 channels per group.
    head = UperNetHead(3, 16, fake_backbone.strides, channels=64).eval()
    features = fake_backbone(torch.rand(1, 3, 224, 224))
    with torch.no_grad():
        before = head(features)
        features["p5"][..., 0, 0] += 5.0
        after = head(features)
    assert (after - before).abs().amax(dim=1).min() > 0


def test_a_subset_of_levels(fake_backbone):
    head = UperNetHead(2, 16, fake_backbone.strides, in_features=("p3", "p4", "p5"), channels=64)
    assert head.stride == 7.0 and len(head.lateral_convs) == 2
    assert head(fake_backbone(torch.rand(1, 3, 112, 112))).shape == (1, 2, 16, 16)


def test_one_level_is_rejected():
    """The other level checks are shared with the Semantic FPN head (test_heads_level_strides.py)."""
    with pytest.raises(ValueError, match="at least two levels"):
        UperNetHead(2, 16, {"p3": 7.0, "p4": 14.0}, in_features=("p3",), channels=32)


def test_grids_that_do_not_nest_are_rejected(fake_backbone):
    head = UperNetHead(2, 16, fake_backbone.strides, channels=32)
    features = {"p2": torch.rand(1, 16, 16, 16), "p3": torch.rand(1, 16, 8, 8)}
    features |= {"p4": torch.rand(1, 16, 4, 4), "p5": torch.rand(1, 16, 3, 3)}  # 4 -> 2 expected
    with pytest.raises(ValueError, match=r"level p5 is \(3, 3\) but p4 is \(4, 4\), not twice"):
        head(features)
