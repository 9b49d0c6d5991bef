"""Overlays drawn a whole image at a time have the pixels torchvision's per-detection drawing gave."""

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from vitdense.tasks.overlay_drawing import class_colors, draw_detections, draw_label_map


def _torchvision_detections(image, boxes, labels, scores, class_names, masks, score_threshold, alpha=0.45):
    """The kit's drawing before it was vectorised: torchvision's masks and boxes, then PIL captions."""
    keep = scores >= score_threshold
    boxes, labels, scores = boxes[keep].float(), labels[keep], scores[keep]
    palette = class_colors(len(class_names) + 1)
    colors = [palette[int(label)] for label in labels]
    image = draw_segmentation_masks(image, masks[keep], alpha=alpha, colors=colors)
    image = draw_bounding_boxes(image, boxes, colors=colors, width=max(1, round(max(image.shape[-2:]) / 300)))
    size = max(10, round(min(image.shape[-2:]) / 45))
    canvas = Image.fromarray(image.permute(1, 2, 0).numpy())
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=size)
    margin = max(1, size // 8)
    for (x1, y1, _, _), label, score, color in zip(boxes.tolist(), labels, scores, colors):
        caption = f"{class_names[int(label) - 1]} {float(score):.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
        x = max(margin, min(x1, canvas.width - right - margin))
        y = max(margin - top, min(y1, canvas.height - bottom - margin))
        corners = (x + left - margin, y + top - margin, x + right + margin, y + bottom + margin)
        draw.rectangle(corners, fill=color)
        dark = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2] < 128
        draw.text((x, y), caption, fill=(255, 255, 255) if dark else (0, 0, 0), font=font)
    return torch.from_numpy(np.array(canvas)).permute(2, 0, 1)


def _detections(height, width, count, generator):
    corners = torch.rand(count, 2, 2, generator=generator) * torch.tensor([width, height])
    boxes = torch.cat([corners.amin(1), corners.amax(1)], 1)
    boxes[0] = torch.tensor([width - 20.0, height - 10.0, width - 1.0, height - 1.0])  # caption moved inside
    rows, cols = torch.arange(height)[None, :, None], torch.arange(width)[None, None, :]
    x1, y1, x2, y2 = (boxes[:, i, None, None] for i in range(4))
    masks = (cols >= x1 - 2) & (cols <= x2 + 2) & (rows >= y1) & (rows <= y2)  # overlapping, past the box
    masks[1] = False  # an empty mask
    labels = torch.randint(1, 6, (count,), generator=generator)
    scores = torch.rand(count, generator=generator)
    return boxes, labels, scores, masks


def test_detection_overlays_match_torchvisions_drawing_pixel_for_pixel():
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 90, 130), dtype=torch.uint8, generator=generator)
    boxes, labels, scores, masks = _detections(90, 130, 40, generator)
    scores[:2] = 0.9
    names = ["a", "bb", "circle", "d", "ellipse"]
    for threshold in (0.0, 0.5):
        expected = _torchvision_detections(image, boxes, labels, scores, names, masks, threshold)
        drawn = draw_detections(image, boxes, labels, scores, names, masks=masks, score_threshold=threshold)
        assert drawn.shape == (3, 90, 130) and drawn.dtype == torch.uint8
        assert torch.equal(drawn, expected)
    no_masks = draw_detections(image, boxes, labels, scores, names, score_threshold=0.5)
    without = _torchvision_detections(image, boxes, labels, scores, names, masks & False, 0.5)
    assert torch.equal(no_masks, without)
    assert torch.equal(draw_detections(image, boxes, labels, scores, names, score_threshold=1.1), image)


def test_detection_overlays_with_more_masks_than_a_byte_counts_match_torchvisions_drawing():
    generator = torch.Generator().manual_seed(2)
    image = torch.randint(0, 256, (3, 60, 80), dtype=torch.uint8, generator=generator)
    boxes, labels, scores, masks = _detections(60, 80, 300, generator)
    names = ["a", "bb", "circle", "d", "ellipse"]
    expected = _torchvision_detections(image, boxes, labels, scores, names, masks, 0.0)
    assert torch.equal(
        draw_detections(image, boxes, labels, scores, names, masks=masks, score_threshold=0.0), expected
    )


def test_label_map_overlays_match_torchvisions_drawing_pixel_for_pixel():
    generator = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8, generator=generator)
    label_map = torch.randint(-1, 8, (40, 50), generator=generator)  # -1 and 6, 7 are not classes: untinted
    present = [value for value in range(6) if (label_map == value).any()]
    palette = class_colors(6)
    expected = draw_segmentation_masks(
        image, torch.stack([label_map == v for v in present]), alpha=0.5, colors=[palette[v] for v in present]
    )
    assert torch.equal(draw_label_map(image, label_map, 6), expected)
    assert torch.equal(draw_label_map(image, torch.full((40, 50), 9), 6), image)
    many = torch.randint(-1, 5000, (40, 50), generator=generator)  # more classes than pixels: some absent
    present = many[many >= 0].unique().tolist()
    palette = class_colors(5000)
    expected = draw_segmentation_masks(
        image, torch.stack([many == v for v in present]), alpha=0.5, colors=[palette[v] for v in present]
    )
    assert torch.equal(draw_label_map(image, many, 5000), expected)
