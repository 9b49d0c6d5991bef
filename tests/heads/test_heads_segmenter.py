import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from tests.helpers import accuracy_after_overfitting_one_image, segmenter_from_recipe
from tests.tiny import TINY_CONFIG
from vitdense.heads.fcn_head import FCNHead
from vitdense.heads.linear_head import LinearHead
from vitdense.heads.segmentation_inference import slide_inference, sliding_windows, whole_inference
from vitdense.heads.segmenter import LinearSegmenter, PyramidSegmenter, Segmenter
from vitdense.heads.semantic_fpn_head import SemanticFPNHead


class PointwiseBackbone(nn.Module):
    """A 1x1 conv with the single-map contract: every output pixel depends on its input pixel only.

    It declares a size divisibility of 14 like the ViT, so the inference helpers pad as they would for it.
    """

    def __init__(self, out_channels: int = 6) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.size_divisibility = 14
        self.conv = nn.Conv2d(3, out_channels, kernel_size=1)

    def forward(self, images: Tensor) -> Tensor:
        assert images.shape[-2] % 14 == 0 and images.shape[-1] % 14 == 0
        return torch.tanh(self.conv(images))


def _pointwise_model(num_classes: int = 4) -> Segmenter:
    torch.manual_seed(0)
    return Segmenter(PointwiseBackbone(), nn.Conv2d(6, num_classes, kernel_size=1)).eval()


def test_pyramid_segmenter_train_and_eval_outputs(tiny_pyramid):
    model = PyramidSegmenter(3, tiny_pyramid, channels=32, aux_channels=32)
    assert isinstance(model.head, SemanticFPNHead) and isinstance(model.aux_head, FCNHead)
    assert model.size_divisibility == 56
    images = torch.randint(0, 256, (2, 3, 112, 168), dtype=torch.uint8)
    outputs = model.train()(images)
    assert set(outputs) == {"out", "aux"}
    for logits in outputs.values():
        assert logits.shape == (2, 3, 112, 168) and logits.dtype == torch.float32
    with torch.no_grad():
        outputs = model.eval()(images)
    assert set(outputs) == {"out"} and outputs["out"].shape == (2, 3, 112, 168)


def test_pyramid_segmenter_without_aux_head(tiny_pyramid):
    model = PyramidSegmenter(2, tiny_pyramid, channels=32, aux_channels=None).train()
    assert model.aux_head is None
    assert set(model(torch.rand(1, 3, 56, 56))) == {"out"}


def test_linear_segmenter_outputs(tiny_vit):
    model = LinearSegmenter(5, tiny_vit, dropout=0.1)
    assert isinstance(model.head, LinearHead) and model.head.norm.num_features == tiny_vit.out_channels
    assert model.size_divisibility == 14 and model.aux_head is None
    images = torch.rand(2, 3, 70, 98)
    for training in (True, False):
        outputs = model.train(training)(images)
        assert set(outputs) == {"out"}
        assert outputs["out"].shape == (2, 5, 70, 98) and outputs["out"].dtype == torch.float32


def test_uint8_input_is_scaled_to_unit_range():
    model = _pointwise_model()
    seen = []
    model.backbone.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    model(torch.full((1, 3, 14, 14), 255, dtype=torch.uint8))
    assert seen[0].dtype == torch.float32 and seen[0].max() == 1.0
    with pytest.raises(TypeError, match="uint8 in"):
        model(torch.zeros(1, 3, 14, 14, dtype=torch.int64))


def test_wrong_sizes_say_how_to_pad(tiny_pyramid, tiny_vit):
    with pytest.raises(ValueError, match=r"pad the batch to a multiple of 56 \(e.g. 112x168\)"):
        PyramidSegmenter(2, tiny_pyramid, channels=32)(torch.rand(1, 3, 100, 140))
    with pytest.raises(ValueError, match=r"multiple of 14 \(e.g. 28x42\)"):
        LinearSegmenter(2, tiny_vit)(torch.rand(1, 3, 20, 42))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        LinearSegmenter(2, tiny_vit)(torch.rand(3, 28, 28))


def test_backbone_contracts_are_checked(tiny_pyramid, tiny_vit):
    with pytest.raises(TypeError, match="lacks `strides`"):
        PyramidSegmenter(2, tiny_vit)
    with pytest.raises(TypeError, match="use PyramidSegmenter"):
        LinearSegmenter(2, tiny_pyramid)
    with pytest.raises(TypeError, match="lacks `size_divisibility`"):
        Segmenter(nn.Identity(), nn.Identity())
    with pytest.raises(ValueError, match="aux_feature 'p7'"):
        PyramidSegmenter(2, tiny_pyramid, channels=32, aux_feature="p7")
    with pytest.raises(ValueError, match="twice the previous"):
        PyramidSegmenter(2, tiny_pyramid, channels=32, in_features=("p2", "p4"))


def test_recipe_gives_a_callable_taking_num_classes():
    """A task's ``Callable[[int], Segmenter]`` argument is filled from a YAML recipe and called with K."""
    recipe = f"""
    model:
      class_path: vitdense.heads.PyramidSegmenter
      init_args:
        channels: 32
        aux_channels: null
        norm_layer: torch.nn.BatchNorm2d
        backbone:
          class_path: vitdense.backbones.SimpleFeaturePyramid
          init_args:
            out_channels: 32
            vit:
              class_path: vitdense.backbones.BirderBackbone
              init_args: {{config: {TINY_CONFIG}}}
    """
    model, _ = segmenter_from_recipe(recipe, num_classes=7)
    assert isinstance(model, PyramidSegmenter) and model.head.num_classes == 7 and model.aux_head is None
    assert isinstance(model.head.scale_heads["p2"][1], nn.BatchNorm2d)
    # The default norm is a named function, so a saved config (LightningCLI's config.yaml) can write it back.
    _, saved = segmenter_from_recipe(recipe.replace("norm_layer: torch.nn.BatchNorm2d", ""), num_classes=7)
    assert "norm_layer: vitdense.heads.group_norm_32" in saved


@pytest.mark.parametrize(
    ("height", "width", "crop", "stride"),
    [
        (100, 130, 56, 37),
        (56, 56, 56, 56),
        (40, 200, 56, 28),
        (30, 20, 56, 10),
        (113, 57, 56, 56),
        (7, 300, 14, 1),
    ],
)
def test_sliding_windows_cover_every_pixel(height, width, crop, stride):
    windows = sliding_windows(height, width, crop, stride)
    count = torch.zeros(height, width, dtype=torch.int64)
    for y1, x1, y2, x2 in windows:
        assert 0 <= y1 < y2 <= height and 0 <= x1 < x2 <= width
        assert (y2 - y1, x2 - x1) == (min(crop, height), min(crop, width))
        count[y1:y2, x1:x2] += 1
    assert count.min() >= 1
    assert len(set(windows)) == len(windows)
    # Steps never exceed the stride, so consecutive windows overlap by at least crop - stride.
    starts_y = sorted({w[0] for w in windows})
    assert all(b - a <= stride for a, b in zip(starts_y, starts_y[1:]))


def test_sliding_windows_counts():
    # mmseg: ceil((L - crop) / stride) + 1 windows per side; 100 px, crop 56, stride 37 -> starts 0, 37, 44.
    assert sorted({w[0] for w in sliding_windows(100, 56, 56, 37)}) == [0, 37, 44]
    assert len(sliding_windows(112, 112, 56, 56)) == 4
    with pytest.raises(ValueError, match="stride <= crop_size"):
        sliding_windows(100, 100, 56, 57)


def test_slide_equals_whole_without_spatial_context():
    model = _pointwise_model(num_classes=4)
    torch.manual_seed(1)
    images = torch.zeros(2, 3, 112, 140)
    images[0, :, :100, :130] = torch.rand(3, 100, 130)
    images[1, :, :40, :130] = torch.rand(3, 40, 130)  # shorter than the crop: its windows get padded
    image_sizes = [(100, 130), (40, 130)]
    orig_sizes = [(150, 195), (40, 130)]
    whole = whole_inference(model, images, image_sizes, orig_sizes)
    slide = slide_inference(model, images, image_sizes, orig_sizes, crop_size=56, stride=37)
    slide_one_by_one = slide_inference(
        model, images, image_sizes, orig_sizes, crop_size=56, stride=37, window_batch_size=1
    )
    for w, s, s1, (h0, w0) in zip(whole, slide, slide_one_by_one, orig_sizes):
        assert w.shape == s.shape == (4, h0, w0) and s.dtype == torch.float32
        torch.testing.assert_close(s, w)
        torch.testing.assert_close(s1, w)


def test_whole_inference_crops_the_valid_region_then_resizes():
    model = _pointwise_model(num_classes=3)
    images = torch.rand(1, 3, 56, 70)
    (out,) = whole_inference(model, images, [(50, 60)], [(25, 30)])
    logits = model(images)["out"][0, :, :50, :60]
    torch.testing.assert_close(out, F.interpolate(logits[None], size=(25, 30), mode="bilinear")[0])


def test_one_window_slide_equals_whole_with_spatial_context(tiny_pyramid):
    model = PyramidSegmenter(3, tiny_pyramid, channels=32).eval()
    images = torch.rand(1, 3, 112, 168)
    whole = whole_inference(model, images, [(112, 168)], [(90, 120)])
    slide = slide_inference(model, images, [(112, 168)], [(90, 120)], crop_size=224, stride=112)
    torch.testing.assert_close(slide[0], whole[0])


def test_slide_inference_checks_the_crop_size():
    model = _pointwise_model()
    images = torch.rand(1, 3, 56, 56)
    with pytest.raises(ValueError, match=r"multiple of the model's size_divisibility 14 \(e.g. 56\)"):
        slide_inference(model, images, [(56, 56)], [(56, 56)], crop_size=50, stride=25)
    with pytest.raises(ValueError, match="exceeds the 56x56 canvas"):
        slide_inference(model, images, [(60, 56)], [(56, 56)], crop_size=56, stride=28)
    with pytest.raises(ValueError, match="1 orig_sizes for 2 images"):
        whole_inference(model, torch.rand(2, 3, 56, 56), [(56, 56)] * 2, [(56, 56)])


def test_pyramid_segmenter_overfits_one_image(tiny_pyramid):
    """Three coloured regions; the model must learn them through the whole ViT + pyramid + heads stack."""
    accuracy = accuracy_after_overfitting_one_image(
        lambda: PyramidSegmenter(3, tiny_pyramid, channels=32, aux_channels=32)
    )
    assert accuracy > 0.9, f"pixel accuracy {accuracy:.3f} after 40 steps"


def test_whole_inference_pads_a_patch_multiple_batch_to_the_pyramid_divisibility(tiny_pyramid):
    model = PyramidSegmenter(3, tiny_pyramid, channels=32, aux_channels=None).eval()
    assert model.size_divisibility == 56
    images = torch.rand(1, 3, 252, 238)  # multiples of 14 (what the data pipeline pads to), not of 56
    (logits,) = whole_inference(model, images, [(250, 230)], [(500, 460)])
    assert logits.shape == (3, 500, 460)
    padded = torch.nn.functional.pad(images, (0, 280 - 238, 0, 280 - 252))
    (expected,) = whole_inference(model, padded, [(250, 230)], [(500, 460)])
    torch.testing.assert_close(logits, expected)


def test_whole_inference_does_not_depend_on_the_batch(tiny_pyramid):
    # Attention sees the whole input: a small image padded to a large batch-mate's size would change.
    model = PyramidSegmenter(3, tiny_pyramid, channels=32).eval()
    large, small = torch.rand(3, 112, 168), torch.rand(3, 56, 84)
    images = torch.zeros(2, 3, 112, 168)
    images[0], images[1, :, :56, :84] = large, small
    with torch.no_grad():
        together = whole_inference(model, images, [(112, 168), (56, 84)], [(112, 168), (40, 60)])
        alone = whole_inference(model, small[None], [(56, 84)], [(40, 60)])
        padded = model(images)["out"][1:, :, :56, :84]
    torch.testing.assert_close(together[1], alone[0])
    assert not torch.allclose(F.interpolate(padded, size=(40, 60), mode="bilinear")[0], alone[0])
