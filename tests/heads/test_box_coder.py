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
    # Several classes per box, and deltas large enough to be clamped before exp(); below float32, decoding
    # runs in float32 (see test_decoding_keeps_float32_anchors_under_bf16_deltas).
    deltas = (torch.randn(500, 4 * 3, generator=generator) * 4).to(dtype)
    at_least_float = torch.promote_types(dtype, torch.float32)
    expected = theirs.decode(deltas.to(at_least_float), [proposals.to(at_least_float)])
    assert torch.equal(ours.decode(deltas, [proposals]), expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_decoding_keeps_float32_anchors_under_bf16_deltas(dtype):
    """Zero deltas give the anchors back to the float32 digit: bf16 holds only every 4th pixel at 512-1024."""
    anchors = torch.tensor([[512.75, 512.75, 540.75, 540.75], [687.75, 687.75, 715.75, 715.75]])
    anchors = torch.cat([anchors, anchors + 280.0])
    decoded = DeviceBoxCoder((1.0, 1.0, 1.0, 1.0)).decode(torch.zeros(4, 4, dtype=dtype), [anchors])
    assert decoded.dtype == torch.float32
    torch.testing.assert_close(decoded.view(4, 4), anchors, rtol=0, atol=1e-4)


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
