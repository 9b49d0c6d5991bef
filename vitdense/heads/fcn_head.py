"""One-conv FCN head, used as the auxiliary segmentation head on one pyramid level."""

from collections.abc import Callable, Mapping

from torch import Tensor, nn

from vitdense.heads.semantic_fpn_head import conv_norm_relu, init_classifier

__all__ = ["FCNHead"]


class FCNHead(nn.Module):
    """3x3 conv, norm, ReLU, dropout and a 1x1 classifier: mmseg's auxiliary ``FCNHead`` (``num_convs=1``,
    ``concat_input=False``).

    Its loss, weighted by the task (mmseg: 0.4), adds a direct supervision signal at a mid-level map during
    training; it is not used at inference.

    Args:
        num_classes: number of output classes K.
        in_channels: channels of the input map.
        in_feature: level to read when the input is a dict of maps (``"p4"``, the ViT's own stride-14 map on a
            simple feature pyramid); None when the input is a single tensor.
        channels: channels of the conv.
        dropout: dropout probability before the classifier.
        norm_layer: norm after the conv, built as ``norm_layer(channels)`` (mmseg: BatchNorm).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        in_feature: str | None = "p4",
        channels: int = 256,
        dropout: float = 0.1,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.in_feature = in_feature
        self.conv = nn.Sequential(*conv_norm_relu(in_channels, channels, norm_layer))
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)
        init_classifier(self.classifier)

    def forward(self, features: Mapping[str, Tensor] | Tensor) -> Tensor:
        """Classify every cell of one map.

        Args:
            features: float (B, in_channels, h, w), or a dict of such maps holding ``in_feature``.

        Returns:
            float (B, num_classes, h, w) logits at the input map's stride.
        """
        if isinstance(features, Tensor):
            if self.in_feature is not None:
                raise TypeError(
                    f"FCNHead(in_feature={self.in_feature!r}) expects a dict of maps, got a tensor"
                )
            x = features
        else:
            if self.in_feature is None:
                raise TypeError(
                    "FCNHead(in_feature=None) expects a tensor; name the level to read from a dict"
                )
            if self.in_feature not in features:
                raise KeyError(f"FCNHead reads level {self.in_feature!r}, absent from {list(features)}")
            x = features[self.in_feature]
        return self.classifier(self.dropout(self.conv(x)))
