"""Pasting per-box Mask R-CNN masks into the image, vectorised over boxes.

A box's M x M mask covers the box exactly: mask bin (i, j) spans `[x1 + j * w / M, x1 + (j + 1) * w / M]` and
its value sits at the bin's centre, and each image pixel takes the bilinear value at its own centre
(`x + 0.5`), zero past the mask's outer bin centres (detectron2's `paste_masks_in_image`, i.e. `grid_sample`
with `align_corners=False` and zero padding). A box-aligned all-ones mask pastes back to exactly the
pixels whose centres are inside the box. torchvision's `paste_masks_in_image` instead pads the mask, widens
the box by (M + 2) / M, truncates it to integers and adds a pixel: masks come out about a pixel too large on
every side (an 8 x 8 square pastes back 56 % larger).

`paste_masks` computes the samples for all boxes at once, only inside each box's clipped region, and writes
the thresholded result straight into one bool (N, H, W) tensor, instead of a Python loop of small kernels per
mask and N float canvases before any threshold.
"""

import torch
from torch import Tensor

__all__ = ["paste_masks"]


def paste_masks(
    masks: Tensor,
    boxes: Tensor,
    image_size: tuple[int, int],
    threshold: float | None = 0.5,
    chunk_elements: int | None = None,
) -> Tensor:
    """Paste per-box masks into an image, each pixel sampled at its centre (see the module docstring).

    Probabilities equal `grid_sample(masks, grid, align_corners=False)` with the grid at the pixel centres
    mapped into each box, up to float rounding. Boxes with no pixel centre within half a mask bin of them
    paste nothing, and so do boxes with an inf or NaN coordinate.

    Args:
        masks: (N, 1, M, M) probabilities, any float dtype; bf16 / fp16 are resampled in float32 and rounded
            back to their dtype before thresholding.
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

    compute = torch.float64 if masks.dtype == torch.float64 else torch.float32
    src = masks[:, 0].to(compute)  # (N, M, M)
    size = src.shape[-1]
    # Sample positions in float64 (cheap: one per row and column): a pixel centre minus a box edge loses
    # digits in float32 far from the origin, which the bins per pixel of a small box would magnify.
    boxes = boxes.to(torch.float64)
    # A box with an inf or NaN coordinate (a diverged model's) becomes a zero-size box: it pastes nothing.
    boxes = boxes.masked_fill(~torch.isfinite(boxes).all(1, keepdim=True), 0)
    # Mask bins per pixel along x and y (a zero-size box gets a huge finite one: it pastes nothing).
    bins_x = size / (boxes[:, 2] - boxes[:, 0]).clamp(min=1e-6)
    bins_y = size / (boxes[:, 3] - boxes[:, 1]).clamp(min=1e-6)
    frame = torch.stack([boxes[:, 0], boxes[:, 1], bins_x, bins_y], 1)  # (N, 4), indexed once per chunk
    # Pixels whose value can be non-zero: centres less than half a bin outside the box. One bin of margin
    # keeps the integer bounds safe from rounding; the extra pixels get zero weights.
    x1 = (boxes[:, 0] - 1 / bins_x).floor().clamp(0, im_w).to(torch.int64)
    y1 = (boxes[:, 1] - 1 / bins_y).floor().clamp(0, im_h).to(torch.int64)
    cw = (boxes[:, 2] + 1 / bins_x).ceil().clamp(0, im_w).to(torch.int64) - x1
    ch = (boxes[:, 3] + 1 / bins_y).ceil().clamp(0, im_h).to(torch.int64) - y1
    region = torch.stack([x1, y1, cw, ch], 1)  # (N, 4): columns [x1, x1 + cw), rows [y1, y1 + ch)

    default_budget, min_fill, windowed = _layout(device)
    budget = chunk_elements or default_budget
    sizes = torch.stack([ch, cw], 1).tolist()  # the one host sync: chunk shapes depend on box sizes
    for members, rows_total, width in _chunks(sizes, budget, min_fill):
        n = len(members)
        idx = torch.tensor(members, device=device)
        box_x1, box_y1, bins_x_, bins_y_ = frame[idx].unbind(1)
        cx1, cy1, cw_, ch_ = region[idx].unbind(1)
        # Each box fills rows of `width` pixels from column `start`, moved left where needed to keep the row
        # inside the image; the row's pixels outside the region get zero weights, hence probability 0.
        start = cx1.clamp(max=im_w - width)
        cols = start[:, None] + torch.arange(width, device=device)  # (n, width) image columns
        ix0, ix1, lx0, lx1 = _bilinear_taps(cols, box_x1[:, None], bins_x_[:, None], size, compute)
        outside = (cols < cx1[:, None]) | (cols >= (cx1 + cw_)[:, None])
        lx0, lx1 = lx0.masked_fill(outside, 0), lx1.masked_fill(outside, 0)
        along_w = _take_cols(src[idx], ix0) * lx0[:, None] + _take_cols(src[idx], ix1) * lx1[:, None]
        along_w = along_w.view(n * size, width)
        # Only rows inside the region are computed: chunk row r is row r - first_row[box] of box `box`.
        box = torch.repeat_interleave(torch.arange(n, device=device), ch_, output_size=rows_total)
        per_box = torch.stack([idx, cy1 - (ch_.cumsum(0) - ch_), start], 1)[box]
        idx_r, row_offset, start_r = per_box.unbind(1)
        img_row = row_offset + torch.arange(rows_total, device=device)
        iy0, iy1, ly0, ly1 = _bilinear_taps(img_row, box_y1[box], bins_y_[box], size, compute)
        value = along_w.index_select(0, box * size + iy0).mul_(ly0[:, None])
        value += along_w.index_select(0, box * size + iy1).mul_(ly1[:, None])  # (rows_total, width)
        value = value.to(masks.dtype)
        if threshold is not None:
            value = value > threshold
        first = idx_r * (im_h * im_w) + img_row * im_w + start_r
        _write_rows(out, first, value, windowed)
    return out.view(num, im_h, im_w)


def _bilinear_taps(
    pixels: Tensor, start: Tensor, bins_per_pixel: Tensor, size: int, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Mask indices and weights of bilinear sampling at pixel centres, zero outside the mask.

    Args:
        pixels: int64 image pixel indices along one axis.
        start: the box's first coordinate along that axis (float), broadcastable to `pixels`.
        bins_per_pixel: mask bins per image pixel (M / box length), broadcastable to `pixels`.
        size: mask length M.
        dtype: dtype of the returned weights.

    Returns:
        int64 indices i0, i1 in [0, M) and `dtype` weights l0, l1 of `pixels`' shape: value =
        mask[i0] * l0 + mask[i1] * l1, where a tap outside the mask has weight 0.
    """
    real = (pixels.to(start.dtype) + 0.5 - start) * bins_per_pixel - 0.5  # in mask bin indices
    i0 = real.floor()
    l1 = real - i0
    l0 = (1 - l1).masked_fill((i0 < 0) | (i0 >= size), 0)
    l1 = l1.masked_fill((i0 < -1) | (i0 >= size - 1), 0)
    i0 = i0.clamp(-1, size - 1).to(torch.int64)  # clamped after the weights: `real` may be far outside
    return i0.clamp(min=0), (i0 + 1).clamp(max=size - 1), l0.to(dtype), l1.to(dtype)


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


def _take_cols(src: Tensor, index: Tensor) -> Tensor:
    """Columns of `src` (n, a, b) picked per box by `index` (n, k): (n, a, k)."""
    return src.gather(2, index[:, None, :].expand(-1, src.shape[1], -1))
