"""Which export wrapper a model takes: the one the model (or the task holding it) gives."""

from typing import Protocol, runtime_checkable

from torch import nn

from vitdense.export.detector_wrapper import DetectorForExport
from vitdense.export.segmenter_wrapper import SegmenterForExport

__all__ = ["ExportWrapper", "Exportable", "exportable", "unwrap"]

ExportWrapper = DetectorForExport | SegmenterForExport
"""A model as an exportable module, with ``input_names``, ``output_names``, ``image_size``,
``sample_inputs(sample, valid_size)`` and ``compare(outputs, inputs, tolerances)``."""


@runtime_checkable
class Exportable(Protocol):
    """What wraps itself for export: :class:`~vitdense.heads.RCNNDetector`, :class:`~vitdense.heads.Segmenter`
    and the tasks (:meth:`~vitdense.tasks.task_contract.DenseTask.export_wrapper`)."""

    def export_wrapper(self, image_size: tuple[int, int]) -> ExportWrapper:
        """The model wrapped for ``torch.export`` at ``image_size`` (H, W)."""


def unwrap(model: nn.Module) -> nn.Module:
    """The detector or segmenter itself, also out of a task that holds it as ``.model``."""
    inner = getattr(model, "model", model)
    if isinstance(inner, Exportable):
        return inner
    raise TypeError(
        "can export an RCNNDetector, a Segmenter or a task holding one as `.model`, "
        f"not {type(model).__name__}"
    )


def exportable(model: nn.Module, image_size: tuple[int, int]) -> ExportWrapper:
    """Wrap a detector, a segmenter or a task holding one as ``.model`` for export at ``image_size`` (H, W).

    The model (or task) gives its own wrapper: an :class:`RCNNDetector` (Faster / Mask / Cascade Mask R-CNN) a
    :class:`DetectorForExport`, a :class:`Segmenter` a :class:`SegmenterForExport`.
    """
    if isinstance(model, Exportable):
        return model.export_wrapper(image_size)
    return unwrap(model).export_wrapper(image_size)
