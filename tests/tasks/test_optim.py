import pytest
import torch
from torch import nn

from tests.tiny import TINY_CONFIG, TINY_NETWORK
from vitdense.backbones import BirderBackbone
from vitdense.tasks.optim import (
    WarmupCosineLR,
    WarmupMultiStepLR,
    WarmupPolyLR,
    apply_lr_scale,
    layer_decay_param_groups,
)


class _Model(nn.Module):
    def __init__(self, freeze="none"):
        super().__init__()
        self.vit = BirderBackbone(TINY_NETWORK, config=TINY_CONFIG, freeze=freeze)
        self.head = nn.Linear(64, 3)


def _group_of(groups, name):
    (group,) = [group for group in groups if name in group["param_names"]]
    return group


def test_layer_decay_scales_and_no_decay_groups():
    model = _Model()
    groups = layer_decay_param_groups(model, layer_decay=0.5)
    # 2 blocks: embeddings depth 0 -> 0.5**3, block 0 -> 0.5**2, block 1 -> 0.5, head -> 1
    assert _group_of(groups, "vit.net.conv_proj.weight")["lr_scale"] == 0.125
    assert _group_of(groups, "vit.net.encoder.block.0.attn.qkv.weight")["lr_scale"] == 0.25
    assert _group_of(groups, "vit.net.encoder.block.1.mlp.fc2.weight")["lr_scale"] == 0.5
    assert _group_of(groups, "head.weight")["lr_scale"] == 1.0
    for name in (
        "vit.net.pos_embedding",
        "vit.net.reg_tokens",
        "vit.net.encoder.block.0.norm1.weight",
        "head.bias",
    ):
        assert _group_of(groups, name)["weight_decay"] == 0.0
    for name in ("vit.net.encoder.block.0.attn.qkv.weight", "head.weight"):
        assert "weight_decay" not in _group_of(groups, name)
    grouped = sorted(name for group in groups for name in group["param_names"])
    assert grouped == sorted(name for name, _ in model.named_parameters())


def test_frozen_parameters_are_left_out():
    groups = layer_decay_param_groups(_Model(freeze="all"), layer_decay=0.7)
    assert sorted(name for group in groups for name in group["param_names"]) == ["head.bias", "head.weight"]


def test_optimizer_gets_scaled_lrs_and_its_own_weight_decay():
    model = _Model()
    optimizer = torch.optim.AdamW(layer_decay_param_groups(model, 0.5), lr=1e-3, weight_decay=0.1)
    apply_lr_scale(optimizer)
    by_name = {name: group for group in optimizer.param_groups for name in group["param_names"]}
    assert by_name["vit.net.conv_proj.weight"]["lr"] == pytest.approx(1.25e-4)
    assert by_name["head.weight"]["lr"] == pytest.approx(1e-3)
    assert by_name["head.weight"]["weight_decay"] == 0.1
    assert by_name["head.bias"]["weight_decay"] == 0.0


def _lrs(scheduler, optimizer, steps):
    values = []
    for _ in range(steps):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return values


def test_warmup_multistep():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = WarmupMultiStepLR(optimizer, milestones=[6, 8], gamma=0.1, warmup_steps=4, warmup_factor=0.0)
    lrs = _lrs(scheduler, optimizer, 10)
    assert lrs == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01])


def test_warmup_cosine():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    scheduler = WarmupCosineLR(optimizer, total_steps=12, warmup_steps=2, warmup_factor=0.5, min_factor=0.0)
    lrs = _lrs(scheduler, optimizer, 13)
    assert lrs[0] == pytest.approx(1.0) and lrs[2] == pytest.approx(2.0)
    assert lrs[7] == pytest.approx(1.0) and lrs[12] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))


def test_warmup_poly():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = WarmupPolyLR(optimizer, total_steps=12, warmup_steps=2, warmup_factor=0.0, power=1.0)
    lrs = _lrs(scheduler, optimizer, 13)
    assert lrs[:3] == pytest.approx([0.0, 0.5, 1.0])
    assert lrs[7] == pytest.approx(0.5) and lrs[12] == pytest.approx(0.0)
