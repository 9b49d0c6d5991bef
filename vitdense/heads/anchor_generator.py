"""RPN anchors on pyramid levels with declared, possibly fractional, strides.

torchvision's `AnchorGenerator` derives each level's stride as `image_size // feature_size`: for the
patch-14 pyramid's p2 (stride 3.5) that is 3, so on a 1008 px image the p2 anchors stop at x = 861 and
the lower-right of the image gets no small anchors. It also centres anchors on `i * stride` (cell corners)
and rounds base anchors to integers. `StrideAnchorGenerator` takes the strides, centres anchors on cell
centres and keeps every coordinate exact.
"""

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList

__all__ = ["StrideAnchorGenerator", "default_anchor_sizes"]


def default_anchor_sizes(strides: Sequence[float], multiple: float = 8.0) -> list[list[float]]:
    """One anchor size per level, `multiple * stride` (28, 56, 112, 224, 448 for strides 3.5 ... 56)."""
    return [[multiple * float(s)] for s in strides]


class StrideAnchorGenerator(nn.Module):
    """Anchors centred on every cell of every level, at `(i + offset) * stride` in image pixels.

    Drop-in for torchvision's `AnchorGenerator` inside `RegionProposalNetwork`: same `forward` and
    `num_anchors_per_location`. Aspect ratio is height / width, as in torchvision; an anchor of size `s`
    and ratio `a` is `s / sqrt(a)` wide and `s * sqrt(a)` tall (area `s**2`), not rounded.

    Anchors of one location are ordered ratio-major, size-minor, and locations row-major (y, then x), which is
    the order `RPNHead`'s (A, H, W) outputs are flattened in.

    Args:
        sizes: per level, anchor sizes in pixels (e.g. `[[28.0], [56.0], ...]`).
        aspect_ratios: per level, height / width ratios (e.g. `[[0.5, 1.0, 2.0]] * 5`).
        strides: per level, the true stride in pixels (e.g. `[3.5, 7.0, 14.0, 28.0, 56.0]`).
        offset: anchor centre within a cell, as a fraction of the stride; 0.5 is the cell centre.
    """

    def __init__(
        self,
        sizes: Sequence[Sequence[float]],
        aspect_ratios: Sequence[Sequence[float]],
        strides: Sequence[float],
        offset: float = 0.5,
    ) -> None:
        super().__init__()
        if not (len(sizes) == len(aspect_ratios) == len(strides)):
            raise ValueError(
                f"need one entry per level in sizes ({len(sizes)}), aspect_ratios ({len(aspect_ratios)}) "
                f"and strides ({len(strides)})"
            )
        self.sizes = [[float(s) for s in level] for level in sizes]
        self.aspect_ratios = [[float(a) for a in level] for level in aspect_ratios]
        self.strides = [float(s) for s in strides]
        self.offset = float(offset)
        # Zero-centred (A, 4) float64 boxes per level. Plain attributes rather than buffers:
        # `model.to(torch.bfloat16)` would round buffers, and these are recomputed from the arguments anyway.
        self.cell_anchors = [self._cell_anchors(s, a) for s, a in zip(self.sizes, self.aspect_ratios)]
        # The anchors of the grids seen last, by (grid sizes, dtype, device): a fixed training canvas computes
        # them once, and copies the cell anchors to the GPU once (each copy from host memory makes the host
        # wait for the device).
        self._anchors_of: dict[tuple, Tensor] = {}

    @staticmethod
    def _cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> Tensor:
        """(len(aspect_ratios) * len(sizes), 4) float64 `[x1, y1, x2, y2]` boxes centred on (0, 0)."""
        scales = torch.tensor(sizes, dtype=torch.float64)
        h_ratios = torch.tensor(aspect_ratios, dtype=torch.float64).sqrt()
        ws = (scales[None, :] / h_ratios[:, None]).reshape(-1)
        hs = (scales[None, :] * h_ratios[:, None]).reshape(-1)
        return torch.stack([-ws, -hs, ws, hs], dim=1) / 2

    def num_anchors_per_location(self) -> list[int]:
        """Anchors per cell for each level (what `RPNHead` must predict per location)."""
        return [len(s) * len(a) for s, a in zip(self.sizes, self.aspect_ratios)]

    def grid_anchors(
        self, grid_sizes: Sequence[tuple[int, int]], dtype: torch.dtype, device: torch.device
    ) -> list[Tensor]:
        """Anchors of every level for grids of the given sizes.

        Args:
            grid_sizes: per level, (rows, cols) of the feature map.
            dtype: output dtype.
            device: output device.

        Returns:
            Per level, (rows * cols * A, 4) `[x1, y1, x2, y2]` absolute pixels.
        """
        anchors = []
        for i, ((gh, gw), stride) in enumerate(zip(grid_sizes, self.strides)):
            cell = self.cell_anchors[i].to(device=device)
            # float64 so that (i + 0.5) * 3.5 is exact before the final cast.
            cx = (torch.arange(gw, device=device, dtype=torch.float64) + self.offset) * stride
            cy = (torch.arange(gh, device=device, dtype=torch.float64) + self.offset) * stride
            cy, cx = torch.meshgrid(cy, cx, indexing="ij")
            centres = torch.stack([cx, cy, cx, cy], dim=-1).reshape(-1, 1, 4)
            anchors.append((centres + cell[None]).reshape(-1, 4).to(dtype))
        return anchors

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        """Anchors for every image of the batch.

        Args:
            image_list: the padded batch; `image_list.tensors` is (B, 3, H, W).
            feature_maps: per level, (B, C, H / stride, W / stride).

        Returns:
            Per image, (sum over levels of rows * cols * A, 4) `[x1, y1, x2, y2]` absolute pixels of the
            padded canvas, levels in order. Anchors may extend past the image border, as in torchvision.

        Raises:
            ValueError: if a level's grid times its stride is not the padded image size.
        """
        if len(feature_maps) != len(self.strides):
            raise ValueError(f"got {len(feature_maps)} feature maps for {len(self.strides)} anchor levels")
        img_h, img_w = image_list.tensors.shape[-2:]
        grid_sizes = []
        for level, (fmap, stride) in enumerate(zip(feature_maps, self.strides)):
            gh, gw = fmap.shape[-2:]
            if abs(gh * stride - img_h) > 1e-6 or abs(gw * stride - img_w) > 1e-6:
                raise ValueError(
                    f"level {level} is {gh}x{gw} at stride {stride}, which covers "
                    f"{gh * stride}x{gw * stride} px, but the padded image is {img_h}x{img_w}; "
                    f"pad the image to a multiple of the largest stride ({max(self.strides):g})"
                )
            grid_sizes.append((int(gh), int(gw)))
        # At least float32: bf16 (autocast) cannot hold centres such as 1000.75.
        dtype = torch.promote_types(feature_maps[0].dtype, torch.float32)
        all_levels = self._anchors(grid_sizes, dtype, feature_maps[0].device)
        return [all_levels for _ in range(len(image_list.image_sizes))]

    def _anchors(self, grid_sizes: list[tuple[int, int]], dtype: torch.dtype, device: torch.device) -> Tensor:
        if torch.compiler.is_compiling():
            # Traced programs (torch.export) compute them in the graph rather than keep a stale constant.
            return torch.cat(self.grid_anchors(grid_sizes, dtype, device))
        key = (tuple(grid_sizes), dtype, device)
        if key not in self._anchors_of:
            if len(self._anchors_of) >= 8:  # evaluation at many sizes: keep memory bounded
                self._anchors_of.clear()
            # A normal tensor even when first asked for under inference_mode (validation before training).
            with torch.inference_mode(False):
                self._anchors_of[key] = torch.cat(self.grid_anchors(grid_sizes, dtype, device))
        return self._anchors_of[key]

    def extra_repr(self) -> str:
        return (
            f"sizes={self.sizes}, aspect_ratios={self.aspect_ratios}, strides={self.strides}, "
            f"offset={self.offset}"
        )
