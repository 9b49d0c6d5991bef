"""Which export wrapper a model takes: the one place that tells a detector from a segmenter."""

from torch import nn

from vitdense.export.detector_wrapper import DetectorForExport
from vitdense.export.segmenter_wrapper import SegmenterForExport
from vitdense.heads.detector import RCNNDetector
from vitdense.heads.segmenter import Segmenter
from vitdense.tasks.base import VitDenseTask

__all__ = ["ExportWrapper", "exportable", "unwrap"]

ExportWrapper = DetectorForExport | SegmenterForExport
"""A model as an exportable module, with ``input_names``, ``output_names``, ``image_size``,
``sample_inputs(sample, valid_size)`` and ``compare(outputs, inputs, tolerances)``."""


def unwrap(model: nn.Module) -> RCNNDetector | Segmenter:
    """The detector or segmenter itself, also out of a task that holds it as ``.model``."""
    inner = getattr(model, "model", model)
    if isinstance(inner, (RCNNDetector, Segmenter)):
        return inner
    raise TypeError(
        "can export an RCNNDetector, a Segmenter or a task holding one as `.model`, "
        f"not {type(model).__name__}"
    )


def exportable(model: nn.Module, image_size: tuple[int, int]) -> ExportWrapper:
    """Wrap a detector, a segmenter or a task holding one as ``.model`` for export at ``image_size`` (H, W).

    A task gives its own wrapper (:meth:`~vitdense.tasks.task_contract.DenseTask.export_wrapper`). Of a bare
    model: an :class:`RCNNDetector` (Faster / Mask / Cascade Mask R-CNN) becomes a :class:`DetectorForExport`,
    a :class:`Segmenter` a :class:`SegmenterForExport`.
    """
    if isinstance(model, VitDenseTask):
        return model.export_wrapper(image_size)
    inner = unwrap(model)
    if isinstance(inner, RCNNDetector):
        return DetectorForExport(inner, image_size)
    return SegmenterForExport(inner, image_size)
