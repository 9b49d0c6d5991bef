"""A segmenter as an exportable module: one image in, its logits out."""

from torch import Tensor, nn

from vitdense.export.canvas import check_size, sample_image
from vitdense.export.comparison import CheckResult, Tolerances, compare_logits
from vitdense.heads.segmenter import Segmenter

__all__ = ["SegmenterForExport"]


class SegmenterForExport(nn.Module):
    """An eval-mode :class:`Segmenter` that returns its logits as one tensor, for export at a fixed size.

    Args:
        segmenter: the trained segmenter; it is switched to eval mode.
        image_size: (H, W) input, multiples of ``segmenter.size_divisibility``.
    """

    input_names = ("images",)
    output_names = ("logits",)

    def __init__(self, segmenter: Segmenter, image_size: tuple[int, int]) -> None:
        super().__init__()
        self.segmenter = segmenter.eval()
        self.image_size = check_size(image_size, segmenter.size_divisibility)

    def forward(self, images: Tensor) -> Tensor:
        """Logits of one image.

        Args:
            images: (1, 3, H, W) RGB, uint8 in [0, 255] or float in [0, 1] (the dtype it was exported with).
                An image smaller than the input goes at the top-left, zero-padded; crop its logits.

        Returns:
            float32 (1, K, H, W) logits.
        """
        return self.segmenter(images)["out"]

    def sample_inputs(self, sample: Tensor | None, valid_size: tuple[int, int] | None) -> tuple[Tensor]:
        """``images`` for one sample image (default: a synthetic uint8 one), on the model's device.
        ``valid_size`` is unused: a segmenter's input has no valid region (crop its logits instead)."""
        del valid_size
        return (sample_image(sample, self.image_size, next(self.parameters()).device),)

    def compare(
        self, outputs: Tensor | tuple[Tensor, ...], inputs: tuple[Tensor, ...], tolerances: Tolerances
    ) -> CheckResult:
        """Compare a program's logits on ``inputs`` with the eager segmenter's."""
        logits = outputs[0] if isinstance(outputs, tuple) else outputs
        return CheckResult(compare_logits(logits, self(*inputs), tolerances), None)
