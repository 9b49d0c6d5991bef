"""Export a trained detector or segmenter at a fixed input size, checked against eager PyTorch.

:func:`export_model` wraps the model in a module with tensor inputs and outputs (:class:`DetectorForExport`,
:class:`SegmenterForExport`, chosen by :func:`exportable`), captures it with ``torch.export`` and saves it
(``.pt2``), optionally converts the same program to ONNX, then loads each file back, runs it on a sample
image and compares its outputs with the eager model's (:func:`check_export`). It raises
:class:`ExportCheckError` when they differ by more than :class:`Tolerances`.

Programs take one image at the canvas size they were exported for:

* detector (Faster / Mask / Cascade Mask R-CNN): ``images`` uint8 (1, 3, H, W), ``valid_size`` int64 (2,)
  -> ``boxes`` (D, 4), ``labels`` (D,), ``scores`` (D,), ``num_detections`` () and, with a mask branch,
  ``masks`` (D, 1, 28, 28), in D = ``detections_per_img`` slots;
* segmenter: ``images`` (1, 3, H, W) -> ``logits`` (1, K, H, W).

Loading a ``.pt2`` file needs ``import torchvision`` first: it registers the ``nms`` and ``roi_align`` ops
that detector programs call. Importing this package changes nothing global: the tracing rule it needs for
``nms`` is in force only while :func:`export_model` exports (:func:`nms_keeps_any_count`).

Files, one job each: ``detector_wrapper`` / ``segmenter_wrapper`` (the exportable modules), ``exportable``
(which wrapper a model takes), ``canvas`` (input size and sample image), ``nms_fake_kernel``, ``program``
(export, write, reload and check), ``comparison`` (differences and tolerances), ``onnx_reference``.
"""

from vitdense.export.comparison import CheckResult, ExportCheckError, Tolerances
from vitdense.export.detector_wrapper import DetectorForExport
from vitdense.export.exportable import exportable
from vitdense.export.nms_fake_kernel import nms_keeps_any_count
from vitdense.export.program import ExportReport, check_export, export_model
from vitdense.export.segmenter_wrapper import SegmenterForExport

__all__ = [
    "CheckResult",
    "DetectorForExport",
    "ExportCheckError",
    "ExportReport",
    "SegmenterForExport",
    "Tolerances",
    "check_export",
    "export_model",
    "exportable",
    "nms_keeps_any_count",
]
