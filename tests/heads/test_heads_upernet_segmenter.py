"""UperNetSegmenter on the tiny ViT's four blocks through MultiBlockPyramid (the BEiT / MAE ADE20K model)."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from tests.helpers import accuracy_after_overfitting_one_image, segmenter_from_recipe
from tests.tiny import TINY_CONFIG, TINY_NETWORK
from vitdense.backbones import BirderBackbone, MultiBlockPyramid
from vitdense.heads.fcn_head import FCNHead
from vitdense.heads.segmentation_inference import slide_inference, whole_inference
from vitdense.heads.segmenter import UperNetSegmenter
from vitdense.heads.upernet_head import UperNetHead

# 64 channels: GroupNorm(32) normalises the pooling's 1 x 1 map of one image over 2 channels per group.
CHANNELS = 64
FOUR_BLOCKS = {**TINY_CONFIG, "num_layers": 4}


@pytest.fixture
def four_block_pyramid() -> MultiBlockPyramid:
    torch.manual_seed(0)
    vit = BirderBackbone(TINY_NETWORK, config=FOUR_BLOCKS, out_indices=[0, 1, 2, 3])
    return MultiBlockPyramid(vit)


@pytest.mark.parametrize("size", [(56, 56), (112, 168), (224, 56)])
def test_train_and_eval_outputs_with_the_head_at_stride_3_5(four_block_pyramid, size):
    model = UperNetSegmenter(3, four_block_pyramid, channels=CHANNELS, aux_channels=32)
    assert isinstance(model.head, UperNetHead) and isinstance(model.aux_head, FCNHead)
    assert model.aux_head.in_feature == "p4" and model.size_divisibility == 28
    head_shapes = []
    model.head.register_forward_hook(lambda module, args, out: head_shapes.append(out.shape[-2:]))
    images = torch.randint(0, 256, (2, 3, *size), dtype=torch.uint8)
    outputs = model.train()(images)
    assert set(outputs) == {"out", "aux"}
    for logits in outputs.values():
        assert logits.shape == (2, 3, *size) and logits.dtype == torch.float32
    assert head_shapes[-1] == (size[0] / 3.5, size[1] / 3.5)
    with torch.no_grad():
        outputs = model.eval()(images)
    assert set(outputs) == {"out"} and outputs["out"].shape == (2, 3, *size)


def test_a_518_image_is_padded_to_the_pyramid_divisibility(four_block_pyramid):
    """518 = 37 x 14 is no multiple of the coarsest stride 28: the model refuses it, inference pads it."""
    model = UperNetSegmenter(3, four_block_pyramid, channels=CHANNELS, aux_channels=None).eval()
    images = torch.rand(1, 3, 518, 518)
    with pytest.raises(ValueError, match=r"pad the batch to a multiple of 28 \(e.g. 532x532\)"):
        model(images)
    (logits,) = whole_inference(model, images, [(518, 518)], [(600, 500)])
    assert logits.shape == (3, 600, 500)
    (expected,) = whole_inference(model, F.pad(images, (0, 14, 0, 14)), [(518, 518)], [(600, 500)])
    torch.testing.assert_close(logits, expected)
    (slid,) = slide_inference(model, images, [(518, 518)], [(518, 518)], crop_size=504, stride=336)
    assert slid.shape == (3, 518, 518) and torch.isfinite(slid).all()


def test_backbone_contracts_are_checked(four_block_pyramid):
    with pytest.raises(TypeError, match="lacks `strides`"):
        UperNetSegmenter(2, four_block_pyramid.vit)
    with pytest.raises(ValueError, match="aux_feature 'p6'"):
        UperNetSegmenter(2, four_block_pyramid, channels=CHANNELS, aux_feature="p6")
    with pytest.raises(ValueError, match="twice the previous"):
        UperNetSegmenter(2, four_block_pyramid, channels=CHANNELS, in_features=("p2", "p4"))


def test_recipe_gives_a_callable_taking_num_classes():
    recipe = f"""
    model:
      class_path: vitdense.heads.UperNetSegmenter
      init_args:
        channels: {CHANNELS}
        pool_scales: [1, 3]
        aux_channels: 32
        backbone:
          class_path: vitdense.backbones.MultiBlockPyramid
          init_args:
            vit:
              class_path: vitdense.backbones.BirderBackbone
              init_args: {{config: {FOUR_BLOCKS}, out_indices: [0, 1, 2, 3]}}
    """
    model, saved = segmenter_from_recipe(recipe, num_classes=7)
    assert isinstance(model, UperNetSegmenter) and model.head.num_classes == 7
    assert model.aux_head.classifier.out_channels == 7
    assert [branch[0].output_size for branch in model.head.pyramid_pooling.branches] == [1, 3]
    assert model.backbone.strides == {"p2": 3.5, "p3": 7.0, "p4": 14.0, "p5": 28.0}
    assert "norm_layer: vitdense.heads.group_norm_32" in saved


def test_upernet_segmenter_overfits_one_image(four_block_pyramid):
    """Three coloured regions, learnt through the ViT's four blocks, the neck, UperNet and the FCN head."""
    accuracy = accuracy_after_overfitting_one_image(
        lambda: UperNetSegmenter(3, four_block_pyramid, channels=CHANNELS, aux_channels=32)
    )
    assert accuracy > 0.9, f"pixel accuracy {accuracy:.3f} after 40 steps"


def test_norm_layer_reaches_both_heads(four_block_pyramid):
    model = UperNetSegmenter(2, four_block_pyramid, channels=CHANNELS, norm_layer=nn.BatchNorm2d)
    assert isinstance(model.aux_head.conv[1], nn.BatchNorm2d)
    assert not any(isinstance(m, nn.GroupNorm) for m in model.head.modules())
