"""What a detector and a segmenter share: a backbone checked for its contract and the canvas size it needs."""

from collections.abc import Sequence

from torch import nn

from vitdense.heads.backbone_contract import require_attributes

__all__ = ["CanvasModel"]


class CanvasModel(nn.Module):
    """A model whose backbone sees a zero-padded canvas with sides that are multiples of `size_divisibility`.

    Args:
        backbone: module with `size_divisibility: int` and the other `attributes` the model needs.
        attributes: what the model reads of the backbone, checked here (e.g. `out_channels`, `strides`).
    """

    def __init__(self, backbone: nn.Module, attributes: Sequence[str]) -> None:
        super().__init__()
        require_attributes(backbone, type(self).__name__, attributes)
        self.backbone = backbone

    @property
    def size_divisibility(self) -> int:
        """Canvas height and width must be multiples of this (the backbone's)."""
        return int(self.backbone.size_divisibility)
