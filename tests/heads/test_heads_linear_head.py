import torch
from torch import nn

from vitdense.heads.linear_head import LinearHead


def test_shapes_on_the_vit_map(tiny_vit):
    head = LinearHead(7, tiny_vit.out_channels)
    with torch.no_grad():
        logits = head(tiny_vit(torch.rand(2, 3, 98, 140)))
    assert logits.shape == (2, 7, 7, 10) and logits.dtype == torch.float32


def test_is_batch_norm_then_one_linear_map():
    head = LinearHead(3, 2 * 64, dropout=0.1)  # e.g. two blocks' 64-channel maps concatenated
    assert isinstance(head.norm, nn.BatchNorm2d) and head.norm.num_features == 128
    assert head.classifier.kernel_size == (1, 1) and head.classifier.out_channels == 3
    assert sum(p.numel() for p in head.parameters()) == 2 * 128 + 128 * 3 + 3


def test_every_cell_is_classified_independently():
    head = LinearHead(4, 8).eval()
    features = torch.randn(1, 8, 5, 6)
    out = head(features)
    changed = features.clone()
    changed[..., 2, 3] += 10.0
    diff = (head(changed) - out).abs().sum(dim=1)[0]
    assert diff[2, 3] > 0 and diff.count_nonzero() == 1
