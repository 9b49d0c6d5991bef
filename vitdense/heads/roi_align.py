"""RoIAlign with exact (fractional) pyramid scales, and a CPU implementation with a fast backward.

Two things here:

* `roi_align`: ROIAlignV2 (`aligned=True`, Detectron2's convention: pixel centres at +0.5) that calls
  `torchvision.ops.roi_align` off the CPU and, on the CPU, a gather-based implementation whose backward is
  one vectorised index-add. torchvision's CPU backward is a scalar loop over every (RoI, channel, bin,
  sample) and dominates a small Mask R-CNN training step on the CPU.
* `ExactMultiScaleRoIAlign`: a drop-in for `torchvision.ops.MultiScaleRoIAlign` that takes the strides it
  pools from instead of inferring them. torchvision infers each scale from shapes and rounds it to a power of
  two, which turns the patch-14 pyramid's 1/3.5 into 1/4 and misplaces every p2 RoI by 12.5 %.
"""

import math
from collections.abc import Sequence

import torch
import torchvision
from torch import Tensor, nn
from torchvision.ops.boxes import box_area

__all__ = ["ExactMultiScaleRoIAlign", "roi_align", "roi_align_gather"]


def _axis_samples(
    start: Tensor, length: Tensor, bins: int, grid: int, size: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Bilinear taps along one axis for every sample of every bin, with torchvision's boundary rules.

    Args:
        start: (R,) RoI start in feature-map coordinates (already shifted by -0.5).
        length: (R,) RoI length in feature-map cells.
        bins: number of output bins along the axis.
        grid: samples per bin along the axis.
        size: feature-map length along the axis.

    Returns:
        (low, high, w_low, w_high), each (R, bins * grid): the two neighbouring cell indices and their
        weights.
        Samples outside `[-1, size]` get weight 0 on both taps (they still count in the bin average).
    """
    bin_size = length / bins
    bin_idx = torch.arange(bins, device=start.device, dtype=start.dtype)
    sample_idx = torch.arange(grid, device=start.device, dtype=start.dtype) + 0.5
    # Same operation order as torchvision's kernel: start + ph * bin + ((iy + .5) * bin) / grid.
    pos = (
        start[:, None, None]
        + bin_idx[None, :, None] * bin_size[:, None, None]
        + (sample_idx[None, None, :] * bin_size[:, None, None]) / grid
    ).reshape(start.shape[0], bins * grid)
    inside = (pos >= -1.0) & (pos <= size)
    pos = pos.clamp(min=0.0)
    low = pos.floor().long()
    at_edge = low >= size - 1
    low = torch.where(at_edge, size - 1, low)
    high = torch.where(at_edge, size - 1, low + 1)
    # At the last cell torchvision snaps the sample onto it, so all weight goes to `low`.
    frac = torch.where(at_edge, torch.zeros_like(pos), pos - low.to(pos.dtype))
    inside_f = inside.to(pos.dtype)
    return low, high, (1.0 - frac) * inside_f, frac * inside_f


def roi_align_gather(
    features: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int = 2,
) -> Tensor:
    """ROIAlignV2 (`aligned=True`) as one weighted gather, so that autograd's backward is vectorised.

    Matches `torchvision.ops.roi_align(..., aligned=True)` in value and gradient to float tolerance,
    including its rules for samples outside the map (a sample with y < -1 or y > H contributes 0; otherwise y
    is clamped to [0, H - 1], likewise x). No gradient flows to `rois`, as in torchvision.

    Bilinear sampling on a product grid is separable, so every output bin is a weighted sum of
    `(2 * sampling_ratio) ** 2` feature vectors with weights `w_y * w_x / sampling_ratio ** 2`.
    `embedding_bag` computes exactly that over a channels-last view of the maps without materialising the
    (R, C, samples, 4) tensor of taps; its backward accumulates whole C-rows into the map's gradient.

    Sample positions and the sum run in at least float32, as torchvision's kernel does under autocast: bf16
    positions would move bins by up to 3 px on a 1008 px canvas.

    Args:
        features: (N, C, H, W) float feature maps.
        rois: (R, 5) float `[batch_index, x1, y1, x2, y2]`, boxes in absolute image pixels.
        output_size: (oh, ow) bins, or one int for both.
        spatial_scale: feature cells per image pixel, i.e. 1 / stride (0.2857... for stride 3.5).
        sampling_ratio: samples per bin along each axis; must be > 0 (the adaptive mode is not implemented:
            its sample count depends on each RoI's size and would break the fixed bag size).

    Returns:
        (R, C, oh, ow) pooled features, same dtype as `features`.
    """
    if sampling_ratio <= 0:
        raise ValueError(
            f"roi_align_gather supports only a fixed sampling_ratio > 0, got {sampling_ratio}; "
            "pass e.g. sampling_ratio=2 (torchvision's value; detectron2's ViTDet uses 0, adaptive)"
        )
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    n, c, h, w = features.shape
    r = rois.shape[0]
    if r == 0:  # still connected to `features`, as torchvision's output is
        return features[:0, :, :1, :1].expand(0, c, oh, ow)
    dtype = torch.promote_types(features.dtype, torch.float32)
    rois = rois.detach().to(dtype)
    g = sampling_ratio

    batch = rois[:, 0].long()
    x1 = rois[:, 1] * spatial_scale - 0.5
    y1 = rois[:, 2] * spatial_scale - 0.5
    x2 = rois[:, 3] * spatial_scale - 0.5
    y2 = rois[:, 4] * spatial_scale - 0.5
    y_lo, y_hi, wy_lo, wy_hi = _axis_samples(y1, y2 - y1, oh, g, h)  # (R, oh * g)
    x_lo, x_hi, wx_lo, wx_hi = _axis_samples(x1, x2 - x1, ow, g, w)  # (R, ow * g)

    # Taps per axis for each bin: (R, bins, 2 * g) indices and weights.
    y_idx = torch.stack([y_lo, y_hi], dim=-1).view(r, oh, 2 * g)
    y_wt = torch.stack([wy_lo, wy_hi], dim=-1).view(r, oh, 2 * g)
    x_idx = torch.stack([x_lo, x_hi], dim=-1).view(r, ow, 2 * g)
    x_wt = torch.stack([wx_lo, wx_hi], dim=-1).view(r, ow, 2 * g)

    # Outer product over the two axes: (R, oh, ow, 2g, 2g) row indices into the (N*H*W, C) table.
    base = (batch * (h * w))[:, None, None, None, None]
    flat_idx = base + y_idx[:, :, None, :, None] * w + x_idx[:, None, :, None, :]
    weight = (y_wt[:, :, None, :, None] * x_wt[:, None, :, None, :]) / (g * g)
    bag = (2 * g) ** 2

    table = features.to(dtype).permute(0, 2, 3, 1).reshape(n * h * w, c)
    pooled = nn.functional.embedding_bag(
        flat_idx.reshape(r * oh * ow, bag),
        table,
        mode="sum",
        per_sample_weights=weight.reshape(r * oh * ow, bag),
    )
    return pooled.view(r, oh, ow, c).permute(0, 3, 1, 2).to(features.dtype).contiguous()


def roi_align(
    features: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int = 2,
) -> Tensor:
    """ROIAlignV2 (`aligned=True`): `roi_align_gather` on the CPU, torchvision's kernel elsewhere and under
    `torch.export`.

    A box over a pattern returns that pattern: the bin centres of a box `[x1, y1, x2, y2]` sample the map at
    image positions `x1 + (j + 0.5) * (x2 - x1) / ow`, read at cell `x * spatial_scale - 0.5`.

    Args:
        features: (N, C, H, W) float feature maps.
        rois: (R, 5) float `[batch_index, x1, y1, x2, y2]`, boxes in absolute image pixels.
        output_size: (oh, ow) bins, or one int for both.
        spatial_scale: 1 / stride of `features`, exact (not rounded to a power of two).
        sampling_ratio: samples per bin along each axis; fixed, > 0.

    Returns:
        (R, C, oh, ow) pooled features, in the dtype of `features`; computed in at least float32, as
        torchvision's kernel does under autocast (and here also without it, e.g. for a bf16 model).
    """
    if sampling_ratio <= 0:
        raise ValueError(f"roi_align needs a fixed sampling_ratio > 0, got {sampling_ratio}")
    # torch.export always captures torchvision's op: it has a fake kernel for a symbolic RoI count and an ONNX
    # form (RoiAlign), whereas the gather's embedding_bag becomes an ONNX loop that fails on zero RoIs.
    if features.device.type == "cpu" and not torch.compiler.is_exporting():
        return roi_align_gather(features, rois, output_size, spatial_scale, sampling_ratio)
    dtype = torch.promote_types(features.dtype, torch.float32)
    pooled = torchvision.ops.roi_align(
        features.to(dtype),
        rois.to(dtype),
        output_size,
        spatial_scale=spatial_scale,
        sampling_ratio=sampling_ratio,
        aligned=True,
    )
    return pooled.to(features.dtype)


class ExactMultiScaleRoIAlign(nn.Module):
    """Multi-level RoIAlign over declared pyramid levels with their true strides.

    Drop-in for `torchvision.ops.MultiScaleRoIAlign` inside torchvision's `RoIHeads`, with two differences:
    each level's scale is `1 / stride` as declared (never inferred from shapes, never rounded), and pooling is
    ROIAlignV2 (`aligned=True`).

    Level assignment follows FPN eq. 1 / detectron2: a box of side `sqrt(area)` goes to level
    `floor(k0 + log2(sqrt(area) / canonical_box_size))`, clamped to the available levels, where level `k0`
    is the one with stride `canonical_stride`. The defaults put a 224 px box on the stride-14 level (p4):
    like ResNet-FPN's stride-16 "level 4", p4 is the ViT's native token grid, and a 224 px box then spans
    16 x 16 cells there, as a 112 px box does on p3 and a 56 px box on p2.

    Args:
        featmap_names: names of the levels to pool from, finest first (e.g. `["p2", "p3", "p4", "p5"]`).
        strides: stride in image pixels of each named level (e.g. `[3.5, 7, 14, 28]`); consecutive levels must
            differ by a factor of 2.
        output_size: (oh, ow) bins, or one int for both.
        sampling_ratio: samples per bin along each axis (fixed, > 0).
        canonical_box_size: box side (pixels) that maps to the canonical level.
        canonical_stride: stride of the canonical level; must be `strides[0] * 2**k` for an integer k.
    """

    def __init__(
        self,
        featmap_names: Sequence[str],
        strides: Sequence[float],
        output_size: int | tuple[int, int],
        sampling_ratio: int = 2,
        canonical_box_size: float = 224.0,
        canonical_stride: float = 14.0,
    ) -> None:
        super().__init__()
        if len(featmap_names) != len(strides) or not featmap_names:
            raise ValueError(
                f"featmap_names {list(featmap_names)} and strides {list(strides)} must be non-empty and "
                "of equal length"
            )
        for a, b in zip(strides[:-1], strides[1:]):
            if not math.isclose(b / a, 2.0):
                raise ValueError(f"consecutive strides must double, got {list(strides)}")
        canonical_offset = math.log2(canonical_stride / strides[0])
        if not math.isclose(canonical_offset, round(canonical_offset), abs_tol=1e-9):
            raise ValueError(
                f"canonical_stride {canonical_stride} is not strides[0] ({strides[0]}) times a power of two"
            )
        if sampling_ratio <= 0:
            raise ValueError(f"sampling_ratio must be > 0, got {sampling_ratio}")
        self.featmap_names = list(featmap_names)
        self.strides = [float(s) for s in strides]
        self.output_size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
        self.sampling_ratio = sampling_ratio
        self.canonical_box_size = float(canonical_box_size)
        self.canonical_stride = float(canonical_stride)
        # Index (into featmap_names) of the canonical level; may lie outside the pooled levels.
        self.canonical_index = int(round(canonical_offset))

    def assign_levels(self, boxes: list[Tensor]) -> Tensor:
        """Level index (into `featmap_names`) for every box.

        Args:
            boxes: per image, (N_i, 4) float `[x1, y1, x2, y2]` absolute pixels.

        Returns:
            (sum N_i,) int64 level indices in `[0, len(featmap_names) - 1]`.
        """
        side = torch.sqrt(torch.cat([box_area(b) for b in boxes]))
        # The 1e-8 keeps a box of exactly the canonical size from flooring one level down (detectron2's eps).
        level = torch.floor(self.canonical_index + torch.log2(side / self.canonical_box_size + 1e-8))
        return level.clamp(0, len(self.featmap_names) - 1).to(torch.int64)

    def forward(
        self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        """Pool every box from its assigned level.

        Args:
            x: feature maps by name, each (B, C, H / stride, W / stride); extra names are ignored.
            boxes: per image, (N_i, 4) float `[x1, y1, x2, y2]` absolute pixels of the padded canvas.
            image_shapes: per image (h, w); unused (scales are declared), kept for `RoIHeads`' call signature.

        Returns:
            (sum N_i, C, oh, ow) pooled features, in the order of the concatenated boxes.
        """
        del image_shapes
        missing = [name for name in self.featmap_names if name not in x]
        if missing:
            raise KeyError(f"feature maps {missing} missing; the backbone returned {list(x)}")
        feats = [x[name] for name in self.featmap_names]
        # Boxes stay at least float32: in bf16 a corner past 512 px would move to a multiple of 4.
        device, dtype = feats[0].device, torch.promote_types(feats[0].dtype, torch.float32)
        batch_index = torch.cat(
            [torch.full((b.shape[0],), i, dtype=dtype, device=device) for i, b in enumerate(boxes)]
        )
        rois = torch.cat([batch_index[:, None], torch.cat(boxes).to(dtype)], dim=1)
        levels = self.assign_levels(boxes)

        result = feats[0].new_zeros((rois.shape[0], feats[0].shape[1], *self.output_size))
        for level, (feat, stride) in enumerate(zip(feats, self.strides)):
            idx = torch.where(levels == level)[0]
            # Skipping empty levels saves time; under torch.export the count is symbolic and every level runs.
            if not torch.compiler.is_exporting() and idx.numel() == 0:
                continue
            pooled = roi_align(feat, rois[idx], self.output_size, 1.0 / stride, self.sampling_ratio)
            result = result.index_put((idx,), pooled.to(result.dtype))
        return result

    def extra_repr(self) -> str:
        return (
            f"featmap_names={self.featmap_names}, strides={self.strides}, output_size={self.output_size}, "
            f"sampling_ratio={self.sampling_ratio}, canonical_box_size={self.canonical_box_size}, "
            f"canonical_stride={self.canonical_stride}"
        )
