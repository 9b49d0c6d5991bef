"""torchvision's box coder without host-to-device copies."""

import torch
from torch import Tensor

from vitdense.compat.torchvision import BoxCoder, encode_boxes


class DeviceBoxCoder(BoxCoder):
    """`torchvision.models.detection._utils.BoxCoder` with the same results and no host-to-device copies.

    torchvision's coder builds its weights (encode) and the constant 0.5 (decode) with `torch.tensor(...,
    device=...)` on every call: on a GPU each is a copy from host memory that waits for the device's queue
    (four per training step in the RPN and RoI heads). Here the weights are kept per device and dtype and
    the 0.5 stays a Python number; the arithmetic is torchvision's, operation for operation.

    Decoding runs in at least float32, as detectron2's does: torchvision casts the boxes to the deltas' dtype,
    and under bf16 autocast the heads' deltas are bf16, which holds only every 4th pixel between 512 and
    1024 (zero deltas on an anchor at 700.75 gave 700). Decoded boxes are float32 for bf16 / fp16 deltas.

    Args as `BoxCoder`: `weights` (wx, wy, ww, wh), `bbox_xform_clip`.
    """

    def __init__(self, weights: tuple[float, float, float, float], **kwargs: float) -> None:
        super().__init__(weights, **kwargs)
        self._weights_on: dict[tuple[torch.dtype, torch.device], Tensor] = {}

    def encode_single(self, reference_boxes: Tensor, proposals: Tensor) -> Tensor:
        """Regression targets (N, 4) of `proposals` towards `reference_boxes`, both (N, 4) xyxy."""
        key = (reference_boxes.dtype, reference_boxes.device)
        if key not in self._weights_on:
            with torch.inference_mode(False):  # usable in training even if first built in evaluation
                self._weights_on[key] = torch.as_tensor(self.weights, dtype=key[0], device=key[1])
        return encode_boxes(reference_boxes, proposals, self._weights_on[key])

    def decode_single(self, rel_codes: Tensor, boxes: Tensor) -> Tensor:
        """Boxes (N, 4 * K) xyxy from deltas `rel_codes` (N, 4 * K) applied to `boxes` (N, 4) xyxy."""
        dtype = torch.promote_types(rel_codes.dtype, torch.float32)
        rel_codes, boxes = rel_codes.to(dtype), boxes.to(dtype)
        widths = boxes[:, 2] - boxes[:, 0]
        heights = boxes[:, 3] - boxes[:, 1]
        ctr_x = boxes[:, 0] + 0.5 * widths
        ctr_y = boxes[:, 1] + 0.5 * heights

        wx, wy, ww, wh = self.weights
        dx = rel_codes[:, 0::4] / wx
        dy = rel_codes[:, 1::4] / wy
        # Clamped so that exp() cannot overflow on a wild prediction.
        dw = torch.clamp(rel_codes[:, 2::4] / ww, max=self.bbox_xform_clip)
        dh = torch.clamp(rel_codes[:, 3::4] / wh, max=self.bbox_xform_clip)

        pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
        pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
        half_w = 0.5 * (torch.exp(dw) * widths[:, None])
        half_h = 0.5 * (torch.exp(dh) * heights[:, None])
        corners = (pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h)
        return torch.stack(corners, dim=2).flatten(1)
