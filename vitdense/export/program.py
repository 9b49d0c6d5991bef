"""Export a model at a fixed input size, write the program, load it back and check it against eager
PyTorch."""

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from vitdense.atomic_write import atomic_file, atomic_path
from vitdense.export.comparison import CheckResult, Tolerances
from vitdense.export.exportable import exportable, unwrap
from vitdense.export.nms_fake_kernel import nms_keeps_any_count
from vitdense.export.onnx_reference import run_onnx

__all__ = ["ExportReport", "check_export", "export_model"]


@dataclass
class ExportReport:
    """What :func:`export_model` wrote and how closely the reloaded files matched eager PyTorch.

    Attributes:
        program_path: the ``torch.export`` program (``.pt2``).
        onnx_path: the ONNX file, or None.
        image_size: (H, W) the programs take.
        input_names: the programs' inputs, in order.
        output_names: the programs' outputs, in order.
        differences: :attr:`CheckResult.differences` of the ``.pt2`` program.
        onnx_differences: the same for the ONNX file (run by onnx's reference evaluator), or None.
        tolerances: the limits both were checked against.
        num_detections: detections on the sample image (None for a segmenter). With 0, only their absence
            was compared: check with an image that has objects.
        seconds: wall time of export, save, load and checks.
        warnings: what makes the check weaker than it looks (no detections on the sample).
    """

    program_path: Path
    onnx_path: Path | None
    image_size: tuple[int, int]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    differences: dict[str, float]
    onnx_differences: dict[str, float] | None
    tolerances: Tolerances
    num_detections: int | None
    seconds: float
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A few lines for the command line."""
        h, w = self.image_size
        lines = [f"{', '.join(self.input_names)} ({h}x{w}) -> {', '.join(self.output_names)}"]
        files = [(self.program_path, self.differences), (self.onnx_path, self.onnx_differences)]
        for path, differences in files:
            if path is not None and differences is not None:
                measured = ", ".join(f"{name} {value:.2g}" for name, value in differences.items())
                lines.append(f"{path}: matches eager PyTorch, max |difference| {measured}")
        if self.num_detections is not None:
            lines.append(f"detections on the sample image: {self.num_detections}")
        if self.num_detections is None:  # a segmenter's logits
            checked = ("logit", "logit_rel")
        else:
            checked = ("box_px", "score", "mask") if "masks" in self.differences else ("box_px", "score")
        limits = ", ".join(f"{name} {getattr(self.tolerances, name):g}" for name in checked)
        lines.append(f"tolerances: {limits}")
        return "\n".join(lines + [f"warning: {text}" for text in self.warnings])


def check_export(
    exported: torch.export.ExportedProgram | str | Path,
    model: nn.Module,
    image_size: tuple[int, int],
    sample: Tensor | None = None,
    *,
    valid_size: tuple[int, int] | None = None,
    tolerances: Tolerances | None = None,
) -> CheckResult:
    """Run an exported program and the eager model on one image and compare their outputs.

    Args:
        exported: a program, a ``.pt2`` file, or an ``.onnx`` file (run with onnx's reference evaluator on
            the CPU; the model must then be on the CPU too).
        model: the eager detector, segmenter or task the program should reproduce; left in its mode.
        image_size: (H, W) the program was exported at.
        sample: one image, (3, H, W) or (1, 3, H, W), at that size, uint8 (a segmenter exported for float
            input takes float in [0, 1]); default: a fixed synthetic image.
        valid_size: detector only, (h, w) of the image inside the canvas; default the whole canvas.
        tolerances: largest accepted differences; default :class:`Tolerances`.

    Returns:
        The largest difference per output and the number of detections.

    Raises:
        ExportCheckError: another number of detections, a detection without a counterpart of its label, or
            a difference above its tolerance; the message names the output, the difference and the detection
            or pixel.
    """
    tolerances = tolerances or Tolerances()
    inner = unwrap(model)
    training = inner.training
    try:
        wrapper = exportable(model, image_size)
        inputs = wrapper.sample_inputs(sample, valid_size)
        with torch.no_grad():
            if isinstance(exported, (str, Path)) and Path(exported).suffix == ".onnx":
                if inputs[0].device.type != "cpu":
                    raise ValueError("an ONNX file is checked on the CPU: move the model to the CPU first")
                outputs = run_onnx(Path(exported), inputs)
            else:
                if not isinstance(exported, torch.export.ExportedProgram):
                    exported = torch.export.load(str(exported))
                outputs = exported.module()(*inputs)
            return wrapper.compare(outputs, inputs, tolerances)
    finally:
        inner.train(training)


def export_model(
    model: nn.Module,
    image_size: tuple[int, int],
    path: str | Path,
    *,
    sample: Tensor | None = None,
    valid_size: tuple[int, int] | None = None,
    onnx: bool = False,
    tolerances: Tolerances | None = None,
) -> ExportReport:
    """Export a detector or segmenter at a fixed input size, reload it and check it against eager PyTorch.

    Writes ``path`` with ``torch.export.save`` (name it ``*.pt2``) and, with ``onnx``, the same program as
    ``path.with_suffix(".onnx")`` (``torch.onnx.export(..., dynamo=True)``, weights inside the file), each
    whole or not at all (:mod:`vitdense.atomic_write`). Each file is loaded back and compared with the eager
    model on ``sample`` (:func:`check_export`). The model is left in the mode it came in.

    Args:
        model: an :class:`RCNNDetector`, a :class:`Segmenter`, or a task holding one as ``.model`` (e.g. a
            ``DetectionTask`` restored from a checkpoint), on the device to export for; the CPU for ONNX.
        image_size: (H, W) input of the exported program, multiples of the model's ``size_divisibility``
            (56 for a simple feature pyramid with p6, 14 for a plain ViT).
        path: where to write the program.
        sample: image to check on, (3, H, W) or (1, 3, H, W) at ``image_size``, uint8 (a segmenter may take
            float in [0, 1], and is then exported for float input). Default: a synthetic image of smooth
            colour blobs, on which a trained detector may find nothing; pass a real image for a meaningful
            check.
        valid_size: detector only, (h, w) of the sample inside the canvas; default the whole canvas.
        onnx: also write and check ONNX (needs the ``onnx`` and ``onnxscript`` packages). Checking runs onnx's
            pure-NumPy reference evaluator: seconds for the demo models, much longer for a full-size ViT.
        tolerances: largest accepted differences; default :class:`Tolerances`.

    Returns:
        An :class:`ExportReport`: paths, inputs and outputs of the program, measured differences.

    Raises:
        ExportCheckError: a reloaded file's outputs differ from eager PyTorch. The files stay on disk.
    """
    start = time.perf_counter()
    tolerances = tolerances or Tolerances()
    path = Path(path)
    inner = unwrap(model)
    training = inner.training
    try:
        wrapper = exportable(model, image_size)
        inputs = wrapper.sample_inputs(sample, valid_size)
        if onnx and inputs[0].device.type != "cpu":
            raise ValueError("ONNX is exported and checked on the CPU: move the model to the CPU first")
        onnx_path = path.with_suffix(".onnx") if onnx else None
        # The ONNX conversion traces the program's ops again, so it too runs under the nms rule.
        with torch.no_grad(), nms_keeps_any_count():
            program = torch.export.export(wrapper, inputs, strict=False)
            with atomic_file(path) as file:
                torch.export.save(program, file)
            if onnx_path is not None:
                with atomic_path(onnx_path) as temporary:
                    torch.onnx.export(
                        program,
                        f=str(temporary),
                        dynamo=True,
                        input_names=list(wrapper.input_names),
                        output_names=list(wrapper.output_names),
                        external_data=False,
                        verbose=False,
                    )
        # Checked as a user runs them: loaded back, with torchvision's own nms rule in force.
        check = check_export(path, inner, image_size, inputs[0], valid_size=valid_size, tolerances=tolerances)
        onnx_check = None
        if onnx_path is not None:
            onnx_check = check_export(
                onnx_path, inner, image_size, inputs[0], valid_size=valid_size, tolerances=tolerances
            )
    finally:
        inner.train(training)
    warnings = []
    if check.num_detections == 0:
        warnings.append("no detections on the sample image: only their absence was compared")
    return ExportReport(
        program_path=path,
        onnx_path=onnx_path,
        image_size=wrapper.image_size,
        input_names=wrapper.input_names,
        output_names=wrapper.output_names,
        differences=check.differences,
        onnx_differences=onnx_check.differences if onnx_check is not None else None,
        tolerances=tolerances,
        num_detections=check.num_detections,
        seconds=time.perf_counter() - start,
        warnings=warnings,
    )
