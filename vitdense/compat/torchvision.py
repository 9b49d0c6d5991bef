"""torchvision's detection building blocks that live in its private ``_utils`` module.

``torchvision.models.detection`` exports its models but not the box coder, the matcher and the sampler they
are built from; the kit's heads subclass or use them as they are. Checked by
``tests/compat/test_torchvision.py``.
"""

from torchvision.models.detection._utils import (
    BalancedPositiveNegativeSampler,
    BoxCoder,
    Matcher,
    encode_boxes,
)

__all__ = ["BalancedPositiveNegativeSampler", "BoxCoder", "Matcher", "encode_boxes"]
