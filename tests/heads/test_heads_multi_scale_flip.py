"""multi_scale_flip_inference: mmseg's aug-test over whole-image and sliding-window inference."""

import functools

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from tests.tiny import TINY_CONFIG, TINY_NETWORK
from vitdense.backbones import BirderBackbone, MultiBlockPyramid
from vitdense.heads.segmentation_inference import multi_scale_flip_inference, slide_inference, whole_inference
from vitdense.heads.segmenter import Segmenter, UperNetSegmenter

ADE20K_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


class Passthrough(nn.Module):
    """Returns the images: the head alone decides the logits. Divisibility 14, like the ViT."""

    size_divisibility = 14

    def forward(self, images: Tensor) -> Tensor:
        return images


class MirrorSymmetricConv(nn.Module):
    """A 3x3 conv whose kernels are mirror-symmetric left-right: it commutes with a horizontal flip."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, num_classes, kernel_size=3, padding=1)

    def forward(self, images: Tensor) -> Tensor:
        weight = (self.conv.weight + self.conv.weight.flip(-1)) / 2
        return F.conv2d(images, weight, self.conv.bias, padding=1)


class WidthLogit(nn.Module):
    """Two classes with constant logits ``[0, canvas width / 28]``: a known output at each scale."""

    def forward(self, images: Tensor) -> Tensor:
        b, _, h, w = images.shape
        return torch.stack([torch.zeros(b, h, w), torch.full((b, h, w), w / 28)], dim=1)


class ColumnLogit(nn.Module):
    """Two classes with logits ``[0, 0.1 * canvas column]``, whatever the image: not flip-equivariant."""

    def forward(self, images: Tensor) -> Tensor:
        b, _, h, w = images.shape
        column = 0.1 * torch.arange(w, dtype=torch.float32).expand(b, h, w)
        return torch.stack([torch.zeros_like(column), column], dim=1)


def _model(head: nn.Module) -> Segmenter:
    return Segmenter(Passthrough(), head).eval()


@pytest.fixture(scope="module")
def upernet() -> Segmenter:
    torch.manual_seed(0)
    vit = BirderBackbone(TINY_NETWORK, config={**TINY_CONFIG, "num_layers": 4}, out_indices=[0, 1, 2, 3])
    return UperNetSegmenter(3, MultiBlockPyramid(vit), channels=64, aux_channels=None).eval()


def _batch() -> tuple[Tensor, list[tuple[int, int]], list[tuple[int, int]]]:
    """Two uint8 images of different sizes on one zero-padded canvas, each from a larger original."""
    torch.manual_seed(1)
    images = torch.zeros(2, 3, 112, 140, dtype=torch.uint8)
    images[0, :, :100, :130] = torch.randint(0, 256, (3, 100, 130), dtype=torch.uint8)
    images[1, :, :56, :84] = torch.randint(0, 256, (3, 56, 84), dtype=torch.uint8)
    return images, [(100, 130), (56, 84)], [(150, 195), (70, 105)]


@pytest.mark.parametrize("window", [None, (56, 42)])
def test_one_scale_without_flip_is_single_scale_inference_exactly(upernet, window):
    images, image_sizes, orig_sizes = _batch()
    if window is None:
        infer = functools.partial(whole_inference, upernet)
    else:
        infer = functools.partial(slide_inference, upernet, crop_size=window[0], stride=window[1])
    single = infer(images, image_sizes, orig_sizes)
    augmented = multi_scale_flip_inference(infer, images, image_sizes, orig_sizes, scales=[1.0], flip=False)
    for expected, result, (h0, w0) in zip(single, augmented, orig_sizes):
        assert result.shape == (3, h0, w0) and result.dtype == torch.float32
        assert torch.equal(result, expected.softmax(dim=0))
        assert torch.equal(result.argmax(dim=0), expected.argmax(dim=0))


def test_flip_of_a_mirror_symmetric_image_changes_nothing():
    """Each image's valid region is mirrored, not the canvas with its padding, and mirrored back."""
    model = _model(MirrorSymmetricConv(4))
    half = torch.rand(2, 3, 50, 35)
    images = torch.zeros(2, 3, 56, 84)
    images[0, :, :50, :70] = torch.cat([half[0], half[0].flip(-1)], dim=-1)
    images[1, :, :42, :56] = torch.cat([half[1, :, :42, :28], half[1, :, :42, :28].flip(-1)], dim=-1)
    image_sizes, orig_sizes = [(50, 70), (42, 56)], [(100, 140), (42, 56)]
    infer = functools.partial(whole_inference, model)
    for scales in ([1.0], [0.5, 1.0, 1.5]):
        plain = multi_scale_flip_inference(infer, images, image_sizes, orig_sizes, scales, flip=False)
        flipped = multi_scale_flip_inference(infer, images, image_sizes, orig_sizes, scales, flip=True)
        for a, b in zip(plain, flipped):
            torch.testing.assert_close(b, a)


def test_scales_average_the_softmax_probabilities():
    """Widths 28, 56, 84 give logits [0, 1], [0, 2], [0, 3]: the result is the mean of their softmaxes."""
    infer = functools.partial(whole_inference, _model(WidthLogit()))
    images = torch.rand(1, 3, 56, 56)
    (probabilities,) = multi_scale_flip_inference(infer, images, [(56, 56)], [(40, 40)], [0.5, 1.0, 1.5])
    expected = torch.stack([torch.tensor([0.0, c]).softmax(0) for c in (1.0, 2.0, 3.0)]).mean(0)
    torch.testing.assert_close(probabilities, expected[:, None, None].expand(2, 40, 40))
    # Not the softmax of the mean logits, [0, 2] (the wording; mmseg averages probabilities).
    assert not torch.allclose(probabilities[:, 0, 0], torch.tensor([0.0, 2.0]).softmax(0))


def test_flip_averages_each_pass_mirrored_back():
    """Logit 0.1 * column: the mirrored pass, mirrored back, has 0.1 * (w - 1 - column)."""
    infer = functools.partial(whole_inference, _model(ColumnLogit()))
    images = torch.rand(1, 3, 28, 56)
    (probabilities,) = multi_scale_flip_inference(infer, images, [(28, 56)], [(28, 56)], [1.0], flip=True)
    column = 0.1 * torch.arange(56.0)
    expected_class_1 = (torch.sigmoid(column) + torch.sigmoid(column.flip(0))) / 2
    torch.testing.assert_close(probabilities[1], expected_class_1.expand(28, 56))
    torch.testing.assert_close(probabilities.sum(0), torch.ones(28, 56))


def test_each_scale_resizes_the_valid_region_and_keeps_uint8():
    images, image_sizes, orig_sizes = _batch()
    seen = []

    def recording(canvas: Tensor, sizes: list[tuple[int, int]], originals: list[tuple[int, int]]) -> list:
        seen.append((canvas, sizes))
        assert originals == orig_sizes
        return [torch.zeros(2, h0, w0) for h0, w0 in originals]

    multi_scale_flip_inference(recording, images, image_sizes, orig_sizes, ADE20K_SCALES, flip=True)
    assert len(seen) == 12  # 6 scales x (plain, mirrored)
    for scale_index, scale in enumerate(ADE20K_SCALES):
        (canvas, sizes), (mirrored, mirrored_sizes) = seen[2 * scale_index : 2 * scale_index + 2]
        expected_sizes = [(int(h * scale + 0.5), int(w * scale + 0.5)) for h, w in image_sizes]
        assert sizes == mirrored_sizes == expected_sizes
        assert canvas.dtype == torch.uint8 and canvas.shape[-2:] == tuple(max(s) for s in zip(*sizes))
        for index, ((h, w), (new_h, new_w)) in enumerate(zip(image_sizes, sizes)):
            region = images[index : index + 1, :, :h, :w].float()
            resized = F.interpolate(region, size=(new_h, new_w), mode="bilinear", align_corners=False)
            assert torch.equal(canvas[index, :, :new_h, :new_w], resized[0].round().to(torch.uint8))
            assert torch.equal(mirrored[index, :, :new_h, :new_w], canvas[index, :, :new_h, :new_w].flip(-1))
            assert not canvas[index, :, new_h:].any() and not canvas[index, :, :, new_w:].any()
            assert not mirrored[index, :, new_h:].any() and not mirrored[index, :, :, new_w:].any()
    assert torch.equal(seen[4][0], images[:, :, :100, :130])  # scale 1.0: the images, on the smallest canvas


def test_scales_compose_with_sliding_windows():
    """Without spatial context, slide equals whole inference at every scale, so their means agree."""
    model = Segmenter(Passthrough(), nn.Conv2d(3, 4, kernel_size=1)).eval()
    images, image_sizes, orig_sizes = _batch()
    whole = functools.partial(whole_inference, model)
    slide = functools.partial(slide_inference, model, crop_size=56, stride=42)
    expected = multi_scale_flip_inference(whole, images, image_sizes, orig_sizes, ADE20K_SCALES, flip=True)
    result = multi_scale_flip_inference(slide, images, image_sizes, orig_sizes, ADE20K_SCALES, flip=True)
    for a, b in zip(expected, result):
        torch.testing.assert_close(b, a)


@pytest.mark.parametrize("scales", [[], [0.0], [1.0, -0.5]])
def test_scales_must_be_positive(scales):
    infer = functools.partial(whole_inference, _model(WidthLogit()))
    with pytest.raises(ValueError, match="scales must be positive resize factors"):
        multi_scale_flip_inference(infer, torch.rand(1, 3, 28, 28), [(28, 28)], [(28, 28)], scales)
