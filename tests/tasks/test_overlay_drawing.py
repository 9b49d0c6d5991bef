"""Overlays drawn a whole image at a time have the pixels torchvision's per-detection drawing gave."""

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from vitdense.tasks import overlay_drawing
from vitdense.tasks.overlay_drawing import RenderedCaptions, class_colors, draw_detections, draw_label_map


def _torchvision_detections(image, boxes, labels, scores, class_names, masks, score_threshold, alpha=0.45):
    """The kit's drawing before it was vectorised: torchvision's masks and boxes, then PIL captions at the
    boxes' corners truncated to whole pixels (where torchvision puts its captions), drawn one by one."""
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
    for (x1, y1, _, _), label, score, color in zip(boxes.to(torch.int64).tolist(), labels, scores, colors):
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


def test_captions_drawn_again_from_their_rendered_text_and_wider_than_the_image_match_drawing_them():
    generator = torch.Generator().manual_seed(3)
    image = torch.randint(0, 256, (3, 30, 24), dtype=torch.uint8, generator=generator)
    boxes = torch.tensor([[2.7, 3.2, 20.0, 25.0], [0.0, 14.9, 23.0, 29.0]])
    labels, scores = torch.tensor([1, 2]), torch.tensor([0.91, 0.5])
    names = ["a very long class name", "bb"]
    no_masks = torch.zeros(2, 30, 24, dtype=torch.bool)
    expected = _torchvision_detections(image, boxes, labels, scores, names, no_masks, 0.5)
    for _ in range(2):  # the second time from the captions' rendered text
        assert torch.equal(draw_detections(image, boxes, labels, scores, names), expected)


def _drawn_whole(caption, text_size, pieces_box=None):
    """``caption`` drawn by ``ImageDraw.text`` at (20, 20) on a coloured image, or, with ``pieces_box``, the
    pieces of a :class:`CaptionText` pasted there instead."""
    font = ImageFont.load_default(size=text_size)
    canvas = Image.new("RGB", (40 + 40 * text_size, 40 + 2 * text_size), (200, 30, 60))
    if pieces_box is None:
        ImageDraw.Draw(canvas).text((20, 20), caption, fill=(255, 255, 255), font=font)
    else:
        for coverage, (x, y) in pieces_box.pieces:
            canvas.paste((255, 255, 255), (20 + x, 20 + y), coverage)
    return np.asarray(canvas)


def test_captions_set_from_their_name_and_score_have_the_pixels_and_box_of_the_whole_caption():
    names = ["person", "traffic light", "", "Wayfarer AVATAR", "Tj", "y,", "ffi", "a  b", "trailing ", "Ωμ"]
    names += ["two\nlines", "carriage\rreturn", "tab\tbed"]  # a careless label map's names
    captions = RenderedCaptions()
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))
    for text_size in (10, 13, 19, 45):
        font = ImageFont.load_default(size=text_size)
        for name in names:
            for score in ("0.50", "0.87", "1.00", "0.11"):
                text = captions.get(name, score, text_size)
                assert len(text.pieces) == (1 if "\n" in name else 2)  # Pillow's font: from the two parts
                caption = f"{name} {score}"
                assert text.box == measure.textbbox((0, 0), caption, font=font), caption
                drawn = _drawn_whole(caption, text_size)
                assert np.array_equal(_drawn_whole(caption, text_size, text), drawn), caption
    again = captions.get("person", "0.50", 13)
    assert again.pieces[0][0] is captions.get("person", "0.87", 13).pieces[0][0]  # the name, rendered once


@pytest.mark.parametrize(
    ("kerned_pair", "kerned_caption", "plain_caption"),
    [("n ", ("person", "0.50"), ("dog", "0.50")), (" 1", ("dog", "1.00"), ("dog", "0.50"))],
    ids=["name-space", "space-score"],
)
def test_a_caption_whose_parts_are_kerned_against_the_space_is_rendered_whole(
    monkeypatch, kerned_pair, kerned_caption, plain_caption
):
    default = ImageFont.load_default(size=19)

    class KernedFont(type(default)):
        def getlength(self, text, *args, **kwargs):  # one pair of letters kerned, around the space
            return super().getlength(text, *args, **kwargs) - (1 if kerned_pair in text else 0)

    kerned = KernedFont(io.BytesIO(default.font_bytes), 19, layout_engine=default.layout_engine)
    monkeypatch.setattr(overlay_drawing, "_caption_font", lambda text_size: kerned)
    captions = RenderedCaptions()
    text = captions.get(*kerned_caption, 19)
    assert len(text.pieces) == 1  # whole: its parts would not join as drawn
    caption = " ".join(kerned_caption)
    assert np.array_equal(_drawn_whole(caption, 19, text), _drawn_whole(caption, 19))
    assert len(captions.get(*plain_caption, 19).pieces) == 2


def test_rendered_captions_keep_the_parts_used_last_within_their_bytes():
    captions = RenderedCaptions(max_bytes=3000)
    name, score = (coverage for coverage, _ in captions.get("person", "0.98", 12).pieces)
    assert name.mode == "L" and np.asarray(name).max() == 255  # fully covered where the glyphs are
    assert captions.get("person", "0.97", 12).pieces[0][0] is name  # the name kept
    assert captions.get("person", "0.97", 20).pieces[0][0] is not name  # another size, another rendering
    for value in range(60):
        captions.get("person", f"0.{value:02d}", 12)
    assert 2000 < captions.nbytes <= 3000
    assert captions.get("person", "0.98", 12).pieces[0][0] is name  # used all along: kept
    assert captions.get("person", "0.98", 12).pieces[1][0] is not score  # used least recently: rendered again
    single = RenderedCaptions(max_bytes=1)
    assert single.get("a name larger than the budget", "0.50", 30).box[2] > 100  # kept alone, still drawn


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
