import pytest
import torch
from torch import nn

from vitdense.backbones.checkpointed_block import CheckpointedBlock


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(8)
        self.linear = nn.Linear(8, 8)
        self.drop = nn.Dropout(0.5)
        self.calls = 0

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        self.calls += 1
        return x + scale * self.drop(self.linear(self.norm(x)))


def test_same_names_outputs_and_gradients_with_one_recompute():
    torch.manual_seed(0)
    plain = Residual()
    block = Residual()
    block.load_state_dict(plain.state_dict())
    wrapped = CheckpointedBlock(block)
    assert list(wrapped.state_dict()) == list(plain.state_dict())
    assert [name for name, _ in wrapped.named_parameters()] == [name for name, _ in plain.named_parameters()]

    x = torch.randn(4, 8)
    torch.manual_seed(1)
    expected = plain(x, scale=2.0)
    expected.square().sum().backward()
    torch.manual_seed(1)
    out = wrapped(x, scale=2.0)
    out.square().sum().backward()
    assert block.calls == 2  # forward, then again in backward, with the same dropout mask
    torch.testing.assert_close(out, expected)
    for (name, a), (_, b) in zip(wrapped.named_parameters(), plain.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)

    with torch.no_grad():
        wrapped(x)
    assert block.calls == 3


def test_modes_reach_the_block_itself():
    block = Residual()
    wrapped = CheckpointedBlock(block).eval()
    assert not block.training and not block.drop.training
    wrapped.train()
    assert block.training and block.drop.training


def test_a_block_with_parameters_of_its_own_is_refused():
    block = Residual()
    block.scale = nn.Parameter(torch.ones(1))
    with pytest.raises(ValueError, match="outside its sub-modules"):
        CheckpointedBlock(block)
