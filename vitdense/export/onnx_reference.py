"""Running an exported ONNX file without an ONNX runtime, for the export check."""

from pathlib import Path

import torch
from torch import Tensor

__all__ = ["run_onnx"]


def run_onnx(path: Path, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Run an ONNX file on the CPU with onnx's own reference evaluator (NumPy; no ONNX runtime needed)."""
    import numpy as np
    import onnx
    from onnx.reference import ReferenceEvaluator
    from onnx.reference.ops.op_non_max_suppression import NonMaxSuppression as ReferenceNMS

    class NonMaxSuppression(ReferenceNMS):
        # The reference kernel indexes its scalar inputs as 1-d; the ONNX spec and the exporter make them 0-d.
        # `_run` is onnx.reference's documented extension point (new_ops subclass OpRun and implement it),
        # not a private internal.
        def _run(  # noqa: ANN202 (NumPy arrays in and out, as in onnx.reference)
            self,
            boxes,
            scores,
            max_output=None,
            iou_threshold=None,
            score_threshold=None,
            center_point_box=None,
        ):
            max_output, iou_threshold, score_threshold = (
                None if x is None else x.reshape(-1) for x in (max_output, iou_threshold, score_threshold)
            )
            return super()._run(boxes, scores, max_output, iou_threshold, score_threshold, center_point_box)

    model = onnx.load(str(path))
    evaluator = ReferenceEvaluator(model, new_ops=[NonMaxSuppression])
    feeds = {node.name: x.cpu().numpy() for node, x in zip(model.graph.input, inputs, strict=True)}
    # log(0) = -inf and the like are valid ONNX results (e.g. the RoI level of an empty padding slot).
    with np.errstate(all="ignore"):
        outputs = evaluator.run(None, feeds)
    return tuple(torch.from_numpy(value) for value in outputs)
