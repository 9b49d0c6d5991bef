"""The attributes a model needs its backbone to declare, checked when the model is built."""

from collections.abc import Sequence

from torch import nn

__all__ = ["require_attributes"]


def require_attributes(backbone: nn.Module, model: str, attributes: Sequence[str]) -> None:
    """Raise unless ``backbone`` has every one of ``attributes`` (e.g. ``out_channels``, ``strides``,
    ``size_divisibility``).

    Raises:
        TypeError: naming the first missing attribute and ``model``, the model that needs it.
    """
    for attr in attributes:
        if not hasattr(backbone, attr):
            raise TypeError(f"backbone {type(backbone).__name__} lacks `{attr}`, which {model} needs")
