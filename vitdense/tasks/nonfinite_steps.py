"""Training steps skipped for a loss that is NaN or infinite: counted, warned, and fatal in a row."""

import logging
from typing import Any

import torch

logger = logging.getLogger(__name__)


class NonFiniteSteps:
    """Counts the steps skipped for a non-finite loss, in the run and in a row.

    Args:
        max_in_a_row: this many skipped steps in a row stop the run.
    """

    def __init__(self, max_in_a_row: int) -> None:
        if max_in_a_row < 1:
            raise ValueError(f"max_nonfinite_in_a_row={max_in_a_row}: need at least 1")
        self.max_in_a_row = max_in_a_row
        self.skipped = 0
        self.in_a_row = 0

    def finite(self) -> None:
        """A step whose loss was finite: the run of skipped steps ends."""
        self.in_a_row = 0

    def skip(
        self, step: int, loss: torch.Tensor, losses: dict[str, torch.Tensor], targets: list[dict[str, Any]]
    ) -> str:
        """Count a skipped step and warn, naming the loss terms that were not finite and the batch's images;
        return the warning (for :meth:`stop_if_too_many`)."""
        self.skipped += 1
        self.in_a_row += 1
        terms = {name: float(value) for name, value in losses.items() if not torch.isfinite(value.detach())}
        images = [target.get("file_name", target.get("image_id")) for target in targets]
        message = (
            f"step {step}: non-finite loss {terms or float(loss)} on images {images}; skipped "
            f"({self.in_a_row} in a row, {self.skipped} in this run)"
        )
        logger.warning(message)
        return message

    def stop_if_too_many(self, message: str) -> None:
        """Stop the run after ``max_in_a_row`` skipped steps in a row.

        Raises:
            FloatingPointError: ``message`` (the last skip's) with what to try.
        """
        if self.in_a_row >= self.max_in_a_row:
            raise FloatingPointError(
                f"{message}. Stopping after {self.max_in_a_row} in a row: lower the learning rate, "
                "clip gradients (trainer.gradient_clip_val), use bf16 rather than fp16, or check these "
                "images' annotations (vitdense check-data)"
            )
