"""DINOv2's linear segmentation probe: BatchNorm and a 1x1 conv on the ViT's patch map."""

from torch import Tensor, nn

from vitdense.heads.semantic_fpn_head import init_classifier

__all__ = ["LinearHead"]


class LinearHead(nn.Module):
    """Per-patch linear classifier, DINOv2's "linear" evaluation (Oquab et al. 2023, ``BNHead``).

    Meant for a frozen backbone: the only trained parts are a ``BatchNorm2d`` over the channels and a 1x1
    conv. The BatchNorm matters here beyond DINOv2's reasons: ``BirderBackbone`` returns the last block's
    tokens without the ViT's final norm, so their scale is whatever the residual stream has. For DINOv2's
    multi-layer variant (the "+ms" rows use the last 4 blocks; "ms" also adds multi-scale test-time
    augmentation, which is the task's business) give a backbone whose map concatenates several blocks on
    channels and pass its total ``out_channels``.

    Args:
        num_classes: number of output classes K.
        in_channels: channels of the input map (``backbone.out_channels``).
        dropout: dropout probability before the classifier (DINOv2: 0).
    """

    def __init__(self, num_classes: int, in_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.norm = nn.BatchNorm2d(in_channels)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(in_channels, num_classes, kernel_size=1)
        init_classifier(self.classifier)

    def forward(self, features: Tensor) -> Tensor:
        """Classify every cell of the map.

        Args:
            features: float (B, in_channels, h, w), e.g. the ViT's stride-14 patch map.

        Returns:
            float (B, num_classes, h, w) logits at the map's stride.
        """
        return self.classifier(self.dropout(self.norm(features)))
