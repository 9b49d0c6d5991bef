import pytest
import torch
from torch import nn

from vitdense.heads.fcn_head import FCNHead


def test_reads_its_level_from_a_pyramid(tiny_pyramid):
    head = FCNHead(4, tiny_pyramid.out_channels, in_feature="p4", channels=16)
    with torch.no_grad():
        logits = head(tiny_pyramid(torch.rand(2, 3, 112, 168)))
    assert logits.shape == (2, 4, 112 // 14, 168 // 14) and logits.dtype == torch.float32


def test_default_is_mmseg_auxiliary_head():
    head = FCNHead(3, 32)
    convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.kernel_size, c.out_channels) for c in convs] == [((3, 3), 256), ((1, 1), 3)]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in head.modules()) == 1
    assert isinstance(head.dropout, nn.Dropout2d) and head.dropout.p == 0.1


def test_tensor_input_and_input_kind_errors():
    features = torch.rand(1, 8, 6, 5)
    assert FCNHead(2, 8, in_feature=None, channels=16)(features).shape == (1, 2, 6, 5)
    with pytest.raises(TypeError, match="expects a dict"):
        FCNHead(2, 8, in_feature="p4", channels=16)(features)
    with pytest.raises(TypeError, match="expects a tensor"):
        FCNHead(2, 8, in_feature=None, channels=16)({"p4": features})
    with pytest.raises(KeyError, match="'p3'"):
        FCNHead(2, 8, in_feature="p3", channels=16)({"p4": features})
