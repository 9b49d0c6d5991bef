"""torchvision's private detection ``_utils``, as :mod:`vitdense.compat.torchvision` re-exports them."""

import inspect

import pytest
import torch
import torchvision

from vitdense.compat.torchvision import BalancedPositiveNegativeSampler, BoxCoder, Matcher, encode_boxes

pytestmark = pytest.mark.oldest

CHANGED = f"torchvision {torchvision.__version__}: torchvision.models.detection._utils"


def _parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_the_signatures_the_heads_rely_on_are_unchanged():
    assert _parameters(BoxCoder.__init__) == ["self", "weights", "bbox_xform_clip"], f"{CHANGED}.BoxCoder"
    assert _parameters(encode_boxes) == ["reference_boxes", "proposals", "weights"], f"{CHANGED}.encode_boxes"
    assert _parameters(Matcher.__init__) == [
        "self",
        "high_threshold",
        "low_threshold",
        "allow_low_quality_matches",
    ], f"{CHANGED}.Matcher"
    assert _parameters(BalancedPositiveNegativeSampler.__init__) == [
        "self",
        "batch_size_per_image",
        "positive_fraction",
    ], f"{CHANGED}.BalancedPositiveNegativeSampler"


def test_they_behave_as_the_heads_expect():
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    proposals = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    boxes = torch.tensor([[1.0, 2.0, 11.0, 14.0]])
    deltas = coder.encode_single(boxes, proposals)
    assert torch.allclose(coder.decode_single(deltas, proposals), boxes, atol=1e-5), f"{CHANGED}.BoxCoder"
    matcher = Matcher(0.7, 0.3, allow_low_quality_matches=False)
    matches = matcher(torch.tensor([[0.9, 0.5, 0.1]]))
    expected = [0, Matcher.BETWEEN_THRESHOLDS, Matcher.BELOW_LOW_THRESHOLD]
    assert matches.tolist() == expected, f"{CHANGED}.Matcher"
