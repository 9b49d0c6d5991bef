import pytest
import torch
from torchvision.models.detection._utils import BoxCoder

from vitdense.heads.box_coder import DeviceBoxCoder


def _boxes(generator: torch.Generator, n: int, dtype: torch.dtype) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator) * 900
    wh = torch.rand(n, 2, generator=generator) * 300 + 0.5
    return torch.cat([xy, xy + wh], dim=1).to(dtype)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_encode_and_decode_equal_torchvision_exactly(weights, dtype):
    generator = torch.Generator().manual_seed(0)
    reference, proposals = _boxes(generator, 500, dtype), _boxes(generator, 500, dtype)
    ours, theirs = DeviceBoxCoder(weights), BoxCoder(weights)
    for got, expected in zip(ours.encode([reference], [proposals]), theirs.encode([reference], [proposals])):
        assert torch.equal(got, expected)
    # Several classes per box, and deltas large enough to be clamped before exp().
    deltas = (torch.randn(500, 4 * 3, generator=generator) * 4).to(dtype)
    assert torch.equal(ours.decode(deltas, [proposals]), theirs.decode(deltas, [proposals]))


def test_no_tensor_is_built_from_host_data_after_the_first_call(monkeypatch):
    coder = DeviceBoxCoder((10.0, 10.0, 5.0, 5.0))
    generator = torch.Generator().manual_seed(0)
    reference, proposals = _boxes(generator, 10, torch.float32), _boxes(generator, 10, torch.float32)
    coder.encode([reference], [proposals])  # keeps its weights tensor for this dtype and device
    built = []
    for name in ("tensor", "as_tensor"):
        original = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda *a, _o=original, **k: built.append(a) or _o(*a, **k))
    coder.encode([reference], [proposals])
    coder.decode(torch.zeros(10, 4), [proposals])
    assert built == []
