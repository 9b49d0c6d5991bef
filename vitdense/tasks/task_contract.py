"""What every vitdense task tells the code that uses it: prediction, the predict writer and export ask the
task, never inspect it (no ``isinstance`` or ``hasattr`` to tell detection from segmentation)."""

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from vitdense.tasks.label_space import LabelSpace

Batch = tuple[torch.Tensor, list[dict[str, Any]]]


def image_entries(target: dict[str, Any]) -> dict[str, Any]:
    """The entries of a sample's target that name its image (those of ``image_id``, ``file_name`` and
    ``orig_size`` it has), which every prediction record carries."""
    return {key: target[key] for key in ("image_id", "file_name", "orig_size") if key in target}


class ExportInputs(NamedTuple):
    """What a task is exported at, and the image it is checked on.

    Attributes:
        image_size: (H, W) input of the exported program.
        sample: uint8 (3, H, W) image at ``image_size``, or None for the exporter's synthetic one.
        valid_size: (h, w) of the image inside a detector's canvas; None: the whole input.
    """

    image_size: tuple[int, int]
    sample: torch.Tensor | None
    valid_size: tuple[int, int] | None


class PredictionFiles(Protocol):
    """The files ``vitdense predict`` writes (:class:`~vitdense.tasks.prediction_writer.PredictionWriter`):
    one method per kind of output, called by the task that made it."""

    def write_detections(self, task: "DenseTask", output: dict[str, Any]) -> None:
        """Keep one image's detections for ``predictions.json`` and draw its overlay."""

    def write_label_map(self, task: "DenseTask", output: dict[str, Any]) -> None:
        """Write one image's label map PNG and its overlay."""

    def write_predictions_json(self, task: "DenseTask", records: list[dict[str, Any]]) -> None:
        """Write every image's detections (all processes', gathered) as ``predictions.json``."""

    def write_classes_json(self, task: "DenseTask", written: int) -> None:
        """Write ``classes.json``, what the label maps' values mean, after ``written`` label maps."""


@runtime_checkable
class DenseTask(Protocol):
    """What differs between the kit's tasks, as the tasks themselves provide it.

    :class:`~vitdense.tasks.DetectionTask` and :class:`~vitdense.tasks.SemanticSegmentationTask` implement
    it; a task of your own that does is predicted and exported by ``vitdense predict`` and ``export``.
    """

    label_space: LabelSpace
    """The classes the task predicts (saved in its checkpoints as one entry)."""

    def eval_transform(self) -> Callable[..., tuple[torch.Tensor, dict[str, Any]]]:
        """The evaluation transform, as the task's datamodule applies it (its size saved in checkpoints).

        Raises:
            ValueError: the task does not know its input size (never set up with a datamodule), naming the
                attribute to set.
        """

    def eval_collate(self) -> Callable[[list[tuple[torch.Tensor, dict[str, Any]]]], Batch | None]:
        """The collate function of evaluation batches (a module-level function: DataLoader workers pickle
        it)."""

    def predict_by_sliding_window(self, window: tuple[int, int]) -> None:
        """Predict by a sliding window of ``(crop, stride)`` pixels.

        Raises:
            ValueError: the task has no sliding window, or the window does not fit its model.
        """

    def named_prediction(self, output: dict[str, Any]) -> dict[str, Any]:
        """One image's ``predict_step`` output as :class:`~vitdense.inference.Predictor` returns it (class
        names added where the output has category ids)."""

    def write_prediction(self, files: PredictionFiles, output: dict[str, Any]) -> None:
        """Hand one image's ``predict_step`` output to the writer method of its kind."""

    def finish_predictions(self, files: PredictionFiles, records: list[dict[str, Any]], written: int) -> None:
        """Write what follows all the images (on process 0): ``records`` are the gathered detection records,
        ``written`` the number of label maps written."""

    def class_table(self) -> dict[str, Any]:
        """The class table written beside an exported program: what its outputs' class values mean."""

    def export_inputs(
        self, image_size: tuple[int, int] | None, sample_rgb: np.ndarray | None, file_name: str | None
    ) -> ExportInputs:
        """The export size (``image_size``, or the task's default) and ``sample_rgb``, an (H, W, 3) uint8
        image from ``file_name``, prepared as the exported program's input.

        Raises:
            ValueError: a size the task cannot take or must be given, saying which to give.
        """

    def export_wrapper(self, image_size: tuple[int, int]) -> nn.Module:
        """The model wrapped for ``torch.export`` at ``image_size`` (H, W): tensors in, tensors out."""
