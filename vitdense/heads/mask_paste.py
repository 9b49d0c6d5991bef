"""Pasting per-box Mask R-CNN masks into the image, vectorised over boxes.

torchvision's `paste_masks_in_image` pastes one mask at a time (pad, integer box, `F.interpolate`, copy into a
zero float (H, W) canvas), then stacks the canvases: a Python loop of small kernels per mask, and N float
canvases before any threshold. `paste_masks` computes the same bilinear samples for all boxes at once, only
inside each box's clipped region, and writes the thresholded result straight into one bool (N, H, W) tensor.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["paste_masks"]


def paste_masks(
    masks: Tensor,
    boxes: Tensor,
    image_size: tuple[int, int],
    threshold: float | None = 0.5,
    chunk_elements: int | None = None,
) -> Tensor:
    """Paste per-box masks into an image: torchvision's `paste_masks_in_image(...)[:, 0] > threshold`.

    Same arithmetic as torchvision: each mask is padded by one zero pixel per side, its box is scaled by
    (M + 2) / M about its centre and truncated to integers, the padded mask is resampled to the integer box
    size (x2 - x1 + 1, y2 - y1 + 1) by bilinear `align_corners=False` sampling, and the part inside the
    image is kept. Probabilities equal torchvision's up to the rounding of the interpolation arithmetic (a
    few float32 ulps; one ulp of `masks.dtype` for bf16 / fp16, whose CPU kernel rounds some weights), so a
    thresholded pixel can differ only where the probability is that close to the threshold. Boxes wholly
    outside the image paste nothing (torchvision raises for most of them).

    Args:
        masks: (N, 1, M, M) probabilities, any float dtype. As in `F.interpolate`, bf16 / fp16 are resampled
            in float32 and rounded back to their dtype before thresholding.
        boxes: (N, 4) float `[x1, y1, x2, y2]` pixels in the frame of the target image, on `masks`' device.
        image_size: (h, w) of the target image.
        threshold: a pixel is foreground where its pasted probability is strictly above it (>= 0). None
            returns the probabilities instead.
        chunk_elements: bound on the pixels resampled at once (rows of the boxes' clipped regions, each padded
            to the widest box of its chunk); peak extra memory is a few times this many floats. Default 2**20
            on the CPU, 2**24 on other devices.

    Returns:
        (N, h, w) bool masks, or with `threshold=None` the pasted probabilities in `masks.dtype`.
    """
    if masks.dim() != 4 or masks.shape[1] != 1 or boxes.shape != (masks.shape[0], 4):
        raise ValueError(
            f"expected masks (N, 1, M, M) and boxes (N, 4), got {tuple(masks.shape)} and {tuple(boxes.shape)}"
        )
    if threshold is not None and not threshold >= 0:
        # Pixels outside every box are 0, so a negative threshold would make them all foreground.
        raise ValueError(f"threshold must be >= 0 (or None for probabilities), got {threshold}")
    num, device = masks.shape[0], masks.device
    im_h, im_w = int(image_size[0]), int(image_size[1])
    out_dtype = torch.bool if threshold is not None else masks.dtype
    out = torch.zeros(num * im_h * im_w, dtype=out_dtype, device=device)
    if out.numel() == 0:
        return out.view(num, im_h, im_w)

    # F.interpolate's accumulation type: float64 stays float64, the rest runs in float32.
    compute = torch.float64 if masks.dtype == torch.float64 else torch.float32
    padded = F.pad(masks[:, 0].to(compute), (1, 1, 1, 1))  # (N, M + 2, M + 2)
    in_h, in_w = padded.shape[-2:]

    # Integer boxes exactly as torchvision's expand_boxes(boxes, (M + 2) / M).to(torch.int64).
    scale = float(masks.shape[-1] + 2) / masks.shape[-1]
    w_half = (boxes[:, 2] - boxes[:, 0]) * 0.5
    h_half = (boxes[:, 3] - boxes[:, 1]) * 0.5
    x_c = (boxes[:, 2] + boxes[:, 0]) * 0.5
    y_c = (boxes[:, 3] + boxes[:, 1]) * 0.5
    w_half *= scale
    h_half *= scale
    x1, x2 = (x_c - w_half).to(torch.int64), (x_c + w_half).to(torch.int64)
    y1, y2 = (y_c - h_half).to(torch.int64), (y_c + h_half).to(torch.int64)
    box_w, box_h = (x2 - x1 + 1).clamp(min=1), (y2 - y1 + 1).clamp(min=1)
    # The part of each resampled box inside the image: columns [cx1, cx1 + cw), rows [cy1, cy1 + ch).
    cx1, cy1 = x1.clamp(min=0), y1.clamp(min=0)
    cw = ((x2 + 1).clamp(max=im_w) - cx1).clamp(min=0)
    ch = ((y2 + 1).clamp(max=im_h) - cy1).clamp(min=0)
    geometry = torch.stack([x1, y1, box_w, box_h, cx1, cy1, cw, ch], 1)  # (N, 8), indexed once per chunk

    default_budget, min_fill, windowed = _layout(device)
    budget = chunk_elements or default_budget
    sizes = torch.stack([ch, cw], 1).tolist()  # the one host sync: chunk shapes depend on box sizes
    for members, rows_total, width in _chunks(sizes, budget, min_fill):
        n = len(members)
        idx = torch.tensor(members, device=device)
        x1_, y1_, box_w_, box_h_, cx1_, cy1_, cw_, ch_ = geometry[idx].unbind(1)
        # Each box fills rows of `width` pixels from column `start`, moved left where needed to keep the row
        # inside the image; the row's pixels outside the box get zero weights, hence probability 0.
        start = cx1_.clamp(max=im_w - width)
        cols = start[:, None] + torch.arange(width, device=device)  # (n, width) image columns
        ix0, ix1, lx0, lx1 = _linear_indices(cols - x1_[:, None], in_w, box_w_[:, None], compute)
        outside = (cols < cx1_[:, None]) | (cols >= (cx1_ + cw_)[:, None])
        lx0, lx1 = lx0.masked_fill(outside, 0), lx1.masked_fill(outside, 0)
        # Width first, then height, in the order F.interpolate's CPU kernel accumulates.
        src = padded[idx]
        along_w = _take_cols(src, ix0) * lx0[:, None] + _take_cols(src, ix1) * lx1[:, None]
        along_w = along_w.view(n * in_h, width)
        # Only rows inside the image are computed: chunk row r is row r - first_row[box] of box `box`.
        box = torch.repeat_interleave(torch.arange(n, device=device), ch_, output_size=rows_total)
        per_box = torch.stack([idx, y1_, box_h_, cy1_ - (ch_.cumsum(0) - ch_), start], 1)[box]
        idx_r, y1_r, box_h_r, row_offset, start_r = per_box.unbind(1)
        img_row = row_offset + torch.arange(rows_total, device=device)
        iy0, iy1, ly0, ly1 = _linear_indices(img_row - y1_r, in_h, box_h_r, compute)
        value = along_w.index_select(0, box * in_h + iy0).mul_(ly0[:, None])
        value += along_w.index_select(0, box * in_h + iy1).mul_(ly1[:, None])  # (rows_total, width)
        value = value.to(masks.dtype)
        if threshold is not None:
            value = value > threshold
        first = idx_r * (im_h * im_w) + img_row * im_w + start_r
        _write_rows(out, first, value, windowed)
    return out.view(num, im_h, im_w)


def _layout(device: torch.device) -> tuple[int, float, bool]:
    """(chunk budget, `_chunks`' min_fill, `_write_rows`' windowed) for a device.

    On the CPU, padding rows to a chunk's widest box costs more than another chunk's few dozen small
    operations, so boxes narrower than half the widest start a new chunk, and rows are written through
    windows; on a GPU the launches cost more, and rows are written with per-pixel indices (see `_write_rows`).
    """
    if device.type == "cpu":
        return 2**20, 0.5, True
    return 2**24, 0.0, False


def _write_rows(out: Tensor, first: Tensor, rows: Tensor, windowed: bool) -> None:
    """out[first[r] : first[r] + k] = rows[r] for runs that do not overlap; `out` flat, `rows` (R, k).

    `windowed` indexes a view of every k-long window of `out`: one index per row instead of one int64 index
    per pixel, several times faster on the CPU. The windows overlap (the runs written do not), which CUDA's
    deterministic index_put_ would resolve by copying the view to a contiguous (numel, k) tensor, so CUDA
    takes per-pixel indices.
    """
    k = rows.shape[1]
    if windowed:
        out.as_strided((out.numel() - k + 1, k), (1, 1))[first] = rows
    else:
        out[first[:, None] + torch.arange(k, device=out.device)] = rows


def _chunks(sizes: list[list[int]], budget: int, min_fill: float) -> list[tuple[list[int], int, int]]:
    """Group the non-empty boxes, widest first, into chunks whose rows are padded to their widest box.

    Args:
        sizes: per box, [rows, cols] of its clipped region.
        budget: bound on a chunk's total rows * widest cols; a box larger than that gets a chunk of its own.
        min_fill: a box narrower than this fraction of its chunk's widest starts a new chunk.

    Returns:
        Per chunk: box indices, total rows, widest cols.
    """
    order = sorted((i for i, (h, w) in enumerate(sizes) if h > 0 and w > 0), key=lambda i: -sizes[i][1])
    chunks: list[tuple[list[int], int, int]] = []
    members: list[int] = []
    rows = width = 0
    for i in order:
        h, w = sizes[i]
        if members and ((rows + h) * width > budget or w < min_fill * width):
            chunks.append((members, rows, width))
            members, rows = [], 0
        if not members:
            width = w  # widest first: a chunk's first box is its widest
        members.append(i)
        rows += h
    if members:
        chunks.append((members, rows, width))
    return chunks


def _linear_indices(
    dst: Tensor, in_size: int, out_size: Tensor, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Source indices and weights of bilinear `align_corners=False` resampling, as ATen's upsample kernels.

    Args:
        dst: int64 destination indices along one axis, resampled from `in_size` to `out_size` pixels.
        in_size: source length along that axis.
        out_size: int64 destination lengths, broadcastable to `dst`.
        dtype: accumulation dtype.

    Returns:
        int64 indices i0, i1 and weights l0, l1 of `dst`'s shape: value = src[i0] * l0 + src[i1] * l1.
    """
    # float(in) / out as ATen computes it (in * out.reciprocal() would round differently).
    ratio = torch.full_like(out_size, in_size, dtype=dtype) / out_size.to(dtype)
    real = ((dst.to(dtype) + 0.5) * ratio - 0.5).clamp(min=0)
    i0 = real.floor().to(torch.int64).clamp(max=in_size - 1)
    l1 = (real - i0.to(dtype)).clamp(0, 1)
    i1 = i0 + (i0 < in_size - 1).to(torch.int64)
    return i0, i1, 1 - l1, l1


def _take_cols(src: Tensor, index: Tensor) -> Tensor:
    """Columns of `src` (n, a, b) picked per box by `index` (n, k): (n, a, k)."""
    return src.gather(2, index[:, None, :].expand(-1, src.shape[1], -1))
