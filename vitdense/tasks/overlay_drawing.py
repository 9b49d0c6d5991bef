"""Predictions drawn on their images, whole images at a time: detection overlays and tinted label maps.

The pixels are those of torchvision's ``draw_segmentation_masks`` then ``draw_bounding_boxes`` (a pixel under
one mask takes its colour, under several black, blended in float32 and truncated), without their cost on a
photo with many detections: torchvision sums every mask over the whole image and paints each mask through a
full-image index, 100 full-image passes per image. Here each mask is painted from its bounding region
(:class:`~vitdense.datamodules.instance_masks.InstanceMasks`, which the JSON's RLEs are written from too)
into one index image (which mask is over each pixel, or several), the image is blended once by table lookups
that hold the float32 blend's results, and boxes and captions go on one PIL canvas, each caption's text
rendered once (:class:`RenderedCaptions`, one per prediction run).
"""

import colorsys
import functools
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import NamedTuple

import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from vitdense.datamodules.instance_masks import InstanceMasks, mask_regions

__all__ = [
    "RenderedCaptions",
    "class_colors",
    "detection_overlay",
    "draw_detections",
    "draw_label_map",
    "label_map_overlay",
]


def class_colors(num_colors: int) -> list[tuple[int, int, int]]:
    """Distinct, deterministic colours: hues spaced by the golden ratio, alternating in brightness."""
    colors = []
    for index in range(num_colors):
        hue = (index * 0.618033988749895) % 1.0
        value = 0.95 if index % 2 == 0 else 0.75
        red, green, blue = colorsys.hsv_to_rgb(hue, 0.85, value)
        colors.append((round(255 * red), round(255 * green), round(255 * blue)))
    return colors


class CaptionText(NamedTuple):
    """A caption's rendered text: ``pieces``, each a coverage (an ``L`` image, 0-255) and where its top left
    goes from the point the caption is drawn at, and ``box`` (left, top, right, bottom) from that point, as
    ``ImageDraw.textbbox`` measures the whole caption."""

    pieces: tuple[tuple[Image.Image, tuple[int, int]], ...]
    box: tuple[int, int, int, int]


class _Part(NamedTuple):
    coverage: Image.Image
    box: tuple[int, int, int, int]
    advance: float
    # Whether the text (less a space it ends with) is laid out as its advance plus a space's when a space
    # follows it / precedes it: no kerning with the space that joins it to the caption's other part.
    joins_space_after: bool
    joins_space_before: bool


@functools.lru_cache(maxsize=16)
def _caption_font(text_size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=text_size)


class RenderedCaptions:
    """The text of ``name score`` captions, each name and each score rendered once and set side by side.

    Laying out and rendering a caption costs ~0.17 ms of CPU, during which Pillow holds the interpreter lock:
    100 captions an image held it for ~20 ms, and predicting (whose writer runs Python in the main thread)
    waited on it. A run has few names and at most 101 scores ("0.00" to "1.00") but thousands of their
    pairs, so the name (with the space after it) and the score are rendered apart and the score is set at
    the name's advance. Those are the pixels of drawing the whole caption where the advance is whole pixels
    (Pillow's hinted font), the name is one line and neither part is kerned against the space; any other
    caption is rendered whole. Thread-safe; ``max_bytes`` bounds the coverage kept, the least recently used
    going first.
    """

    def __init__(self, max_bytes: int = 32 * 2**20) -> None:
        self.max_bytes = max_bytes
        self._parts: OrderedDict[tuple[str, int], _Part] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """The bytes of coverage kept."""
        return self._bytes

    def get(self, name: str, score: str, text_size: int) -> CaptionText:
        """The text of the caption ``f"{name} {score}"`` at ``text_size``."""
        head, tail = self._part(f"{name} ", text_size), self._part(score, text_size)
        one_line = "\n" not in name  # a name over several lines puts the score on its last line
        joined_plainly = head.joins_space_after and tail.joins_space_before
        if not (one_line and head.advance.is_integer() and joined_plainly):
            whole = self._part(f"{name} {score}", text_size)
            return CaptionText(((whole.coverage, whole.box[:2]),), whole.box)
        shift = int(head.advance)
        (left, top, right, bottom), (tail_left, tail_top, tail_right, tail_bottom) = head.box, tail.box
        return CaptionText(
            ((head.coverage, (left, top)), (tail.coverage, (shift + tail_left, tail_top))),
            (
                min(left, shift + tail_left),
                min(top, tail_top),
                max(right, shift + tail_right),
                max(bottom, tail_bottom),
            ),
        )

    def _part(self, text: str, text_size: int) -> _Part:
        """``text`` rendered at ``text_size``, from the cache when it is there."""
        key = (text, text_size)
        with self._lock:
            if key in self._parts:
                self._parts.move_to_end(key)
                return self._parts[key]
        part = _rendered_part(text, text_size)
        with self._lock:
            if key not in self._parts:
                self._parts[key] = part
                self._bytes += part.coverage.width * part.coverage.height
                while self._bytes > self.max_bytes and len(self._parts) > 1:
                    _, evicted = self._parts.popitem(last=False)
                    self._bytes -= evicted.coverage.width * evicted.coverage.height
        return part


def _rendered_part(text: str, text_size: int) -> _Part:
    font = _caption_font(text_size)
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))
    left, top, right, bottom = (int(v) for v in measure.textbbox((0, 0), text, font=font))
    coverage = Image.new("L", (max(1, right - left), max(1, bottom - top)))
    ImageDraw.Draw(coverage).text((-left, -top), text, fill=255, font=font)
    word, space = text.removesuffix(" "), font.getlength(" ")
    word_advance = font.getlength(word)
    return _Part(
        coverage,
        (left, top, right, bottom),
        font.getlength(text),
        font.getlength(f"{word} ") == word_advance + space,
        font.getlength(f" {word}") == space + word_advance,
    )


def draw_detections(
    image: Tensor,
    boxes: Tensor,
    labels: Tensor,
    scores: Tensor,
    class_names: Sequence[str],
    *,
    masks: Tensor | None = None,
    score_threshold: float = 0.5,
    mask_alpha: float = 0.45,
) -> Tensor:
    """Masks, boxes and ``name score`` captions of the detections scoring at least ``score_threshold``.

    Args:
        image: uint8 (3, H, W).
        boxes: (N, 4) xyxy pixels of ``image``.
        labels: (N,) in 1..K (``class_names[label - 1]``; colours follow the label).
        scores: (N,).
        class_names: K names.
        masks: bool (N, H, W), or None.
        score_threshold: detections below it are not drawn.
        mask_alpha: mask opacity.

    Returns:
        uint8 (3, H, W).
    """
    pixels = np.ascontiguousarray(image.cpu().permute(1, 2, 0).numpy())
    drawn = detection_overlay(
        pixels,
        boxes,
        labels,
        scores,
        class_names,
        masks=mask_regions(masks) if masks is not None else None,
        score_threshold=score_threshold,
        mask_alpha=mask_alpha,
    )
    return torch.from_numpy(drawn).permute(2, 0, 1).contiguous()


def detection_overlay(
    pixels: np.ndarray,
    boxes: Tensor,
    labels: Tensor,
    scores: Tensor,
    class_names: Sequence[str],
    *,
    masks: InstanceMasks | None = None,
    score_threshold: float = 0.5,
    mask_alpha: float = 0.45,
    captions: RenderedCaptions | None = None,
) -> np.ndarray:
    """:func:`draw_detections` on uint8 (H, W, 3) ``pixels``, as images are read and saved, with the masks
    as their regions (:func:`~vitdense.datamodules.instance_masks.mask_regions`) and the captions' text
    taken from ``captions`` (rendered there when new; default: for this image alone); returns a new uint8
    (H, W, 3) array."""
    keep = (scores >= score_threshold).cpu()
    boxes, labels, scores = boxes.cpu()[keep].float(), labels.cpu()[keep], scores.cpu()[keep]
    if not len(boxes):
        return pixels.copy()
    palette = class_colors(len(class_names) + 1)
    colors = [palette[int(label)] for label in labels]
    if masks is not None:
        painted = _painted_masks(masks, np.flatnonzero(keep.numpy()))
        pixels = _blend(pixels, painted, colors, mask_alpha)
    canvas = Image.fromarray(pixels)
    draw = ImageDraw.Draw(canvas)
    width = max(1, round(max(pixels.shape[:2]) / 300))
    # As torchvision's draw_bounding_boxes: corners truncated to integers, all boxes before any caption.
    corners = boxes.to(torch.int64).tolist()
    for box, color in zip(corners, colors):
        draw.rectangle(box, width=width, outline=color)
    captions = captions if captions is not None else RenderedCaptions()
    text_size = max(10, round(min(pixels.shape[:2]) / 45))
    texts = [
        captions.get(class_names[int(label) - 1], f"{float(score):.2f}", text_size)
        for label, score in zip(labels, scores)
    ]
    _draw_captions(canvas, draw, corners, texts, colors, text_size)
    return np.array(canvas)


def _painted_masks(masks: InstanceMasks, indices: np.ndarray) -> np.ndarray:
    """Which of the masks at ``indices`` lies over each pixel: (H, W) unsigned, 0 under none, k under mask
    ``indices[k - 1]`` alone, ``len(indices) + 1`` under several. Each is painted over its region only."""
    several = len(indices) + 1
    dtype = np.uint8 if several <= np.iinfo(np.uint8).max else np.uint32
    painted = np.zeros((masks.height, masks.width), dtype)
    for k, index in enumerate(indices, start=1):
        crop = masks.crops[index] != 0
        if not crop.size:
            continue
        x, y = (int(v) for v in masks.origins[index])
        extent = painted[y : y + crop.shape[0], x : x + crop.shape[1]]
        under_another = crop & (extent != 0)
        np.copyto(extent, k, where=crop)
        np.copyto(extent, several, where=under_another)
    return painted


def _blend(
    pixels: np.ndarray, painted: np.ndarray, colors: list[tuple[int, int, int]], alpha: float
) -> np.ndarray:
    """uint8 (H, W, 3) ``pixels`` with, where the (H, W) index ``painted`` is k > 0, ``colors[k - 1]`` blended
    in (black past the last colour), as torchvision does it: ``pixel * (1 - alpha) + colour * alpha`` in
    float32, truncated, over every pixel (an uncovered pixel can lose 1 to the float rounding, as it does
    there).

    The result of a channel depends only on its value and the colour over it, so each channel is looked up in
    a table computed by those float32 operations over all 256 values, (colours + 2) x 256 entries, instead of
    blending the image's millions of values in float32.
    """
    values = np.arange(256, dtype=np.float32)
    over = np.array([(0, 0, 0), *colors, (0, 0, 0)], np.float32).T[..., None]  # (3, K + 2, 1)
    table = values * np.float32(1 - alpha) + over * np.float32(alpha)
    # Row 0, uncovered: blended with itself.
    table[:, 0] = values * np.float32(1 - alpha) + values * np.float32(alpha)
    table = table.astype(np.uint8).reshape(3, -1)
    # The index (row << 8 | value) fits 16 bits under 255 colours: a quarter of the memory traffic of intp
    # indices, which is what the lookups cost (3.8 against 10.6 ms over 1 MP).
    row = painted.astype(np.uint16 if len(colors) < 255 else np.intp) << 8
    planes = cv2.split(pixels)
    return cv2.merge([np.take(table[channel], row | plane) for channel, plane in enumerate(planes)])


def _draw_captions(
    canvas: Image.Image,
    draw: ImageDraw.ImageDraw,
    corners: list[list[int]],
    texts: list[CaptionText],
    colors: list[tuple[int, int, int]],
    text_size: int,
) -> None:
    """Each caption in a box of its colour at the top left of its box (``corners``: xyxy whole pixels, as
    torchvision places its captions), its text (:class:`RenderedCaptions`) ``text_size`` pixels high, so that
    it reads on a 12 MP photo as on a thumbnail (torchvision's default font is 10 px at any size). Pillow's
    own font has Latin letters only: other scripts show as empty boxes, as with torchvision's. ``draw``
    draws on ``canvas``."""
    margin = max(1, text_size // 8)
    canvas_width, canvas_height = canvas.size
    for (x1, y1, _, _), (pieces, (left, top, right, bottom)), color in zip(corners, texts, colors):
        # At the box's top left, moved inside the image where the box touches its right or bottom edge.
        x = max(margin, min(x1, canvas_width - right - margin))
        y = max(margin - top, min(y1, canvas_height - bottom - margin))
        draw.rectangle(
            (x + left - margin, y + top - margin, x + right + margin, y + bottom + margin), fill=color
        )
        dark = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2] < 128
        # The pixels of draw.text((x, y), caption, ...): the same coverage blended in by the same fill.
        for coverage, (piece_x, piece_y) in pieces:
            canvas.paste((255, 255, 255) if dark else (0, 0, 0), (x + piece_x, y + piece_y), coverage)


def draw_label_map(image: Tensor, label_map: Tensor, num_classes: int, *, alpha: float = 0.5) -> Tensor:
    """``image`` with every pixel tinted by its class colour (values outside 0..K-1 are left untinted).

    Args:
        image: uint8 (3, H, W).
        label_map: integer (H, W) class indices.
        num_classes: K.
        alpha: tint opacity.

    Returns:
        uint8 (3, H, W).
    """
    pixels = np.ascontiguousarray(image.cpu().permute(1, 2, 0).numpy())
    drawn = label_map_overlay(pixels, label_map, num_classes, alpha=alpha)
    return torch.from_numpy(drawn).permute(2, 0, 1).contiguous()


def label_map_overlay(
    pixels: np.ndarray, label_map: Tensor, num_classes: int, *, alpha: float = 0.5
) -> np.ndarray:
    """:func:`draw_label_map` on uint8 (H, W, 3) ``pixels``; returns a new uint8 (H, W, 3) array."""
    labels = label_map.cpu().numpy()
    covered = (labels >= 0) & (labels < num_classes)
    if not covered.any():
        return pixels.copy()
    # Table rows for the classes present only: a label map may have thousands of classes.
    present = np.flatnonzero(np.bincount(labels[covered], minlength=num_classes))
    row_of = np.zeros(num_classes, np.intp)
    row_of[present] = np.arange(1, len(present) + 1)
    painted = np.where(covered, row_of[np.where(covered, labels, 0)], 0)
    palette = class_colors(num_classes)
    return _blend(pixels, painted, [palette[value] for value in present], alpha)
