import copy

import pytest
import torch
from birder.common import fs_ops
from birder.conf import settings
from birder.data.transforms.classification import get_rgb_stats
from birder.model_registry import registry

from tests.helpers import Payload
from tests.tiny import TINY_CONFIG, TINY_NETWORK
from vitdense.backbones import BirderBackbone, WeightsFileError, skip_weights_loading
from vitdense.backbones.birder_backbone import _config_keys_read
from vitdense.backbones.checkpointed_block import CheckpointedBlock


def _write_birder_weights(tmp_path, monkeypatch, rgb_mode="imagenet", safetensors=False):
    """A tiny network saved by birder's own writers, as a user's weights file would be."""
    torch.manual_seed(0)
    net = registry.net_factory(TINY_NETWORK, 10, config=TINY_CONFIG)
    with torch.no_grad():
        net.norm.weight.uniform_(0.5, 1.5)  # a final norm that is not the identity, so that loading it shows
    rgb_stats = get_rgb_stats(rgb_mode)
    signature = {"inputs": [{"data_shape": [0, 3, 224, 224]}], "outputs": [{"data_shape": [0, 10]}]}
    monkeypatch.setattr(settings, "MODELS_DIR", tmp_path)
    if safetensors:
        path = tmp_path / "tiny.safetensors"
        fs_ops.save_st(net, str(path), net.task, {}, signature, rgb_stats, external_config=TINY_CONFIG)
    else:
        fs_ops.checkpoint_model(
            "tiny", 0, net, signature, {}, rgb_stats, None, None, None, None, external_config=TINY_CONFIG
        )
        path = fs_ops.model_path("tiny", epoch=0)
    return net.eval(), rgb_stats, path


@pytest.mark.oldest
@pytest.mark.parametrize("safetensors", [False, True])
def test_weights_file_reproduces_birder_detection_features(tmp_path, monkeypatch, safetensors):
    net, rgb_stats, path = _write_birder_weights(tmp_path, monkeypatch, safetensors=safetensors)
    backbone = BirderBackbone(TINY_NETWORK, config=TINY_CONFIG, weights=str(path)).eval()
    assert backbone.pixel_mean.flatten().tolist() == pytest.approx(rgb_stats["mean"])
    assert backbone.pixel_std.flatten().tolist() == pytest.approx(rgb_stats["std"])

    images = torch.rand(2, 3, 224, 224)
    mean = torch.tensor(rgb_stats["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(rgb_stats["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = net.detection_features((images - mean) / std)["stage1"]
        actual = backbone(images)
    assert actual.shape == (2, 64, 16, 16)
    torch.testing.assert_close(actual, expected)


def test_contract_attributes_and_default_stats():
    backbone = BirderBackbone(TINY_NETWORK, config=TINY_CONFIG)
    assert (backbone.out_channels, backbone.stride, backbone.size_divisibility) == (64, 14, 14)
    assert backbone.pixel_mean.flatten().tolist() == pytest.approx(get_rgb_stats("birder")["mean"])


def test_full_size_network_shape_contract():
    backbone = BirderBackbone()
    assert backbone.out_channels == 896 and backbone.stride == 14 and backbone.num_blocks == 18
    assert sum(p.numel() for p in backbone.parameters()) == pytest.approx(171e6, rel=0.01)


@pytest.mark.parametrize("size", [(112, 168), (252, 98), (224, 224)])
def test_any_multiple_of_the_patch_size(size):
    backbone = BirderBackbone(TINY_NETWORK, config=TINY_CONFIG).eval()
    with torch.no_grad():
        features = backbone(torch.rand(1, 3, *size))
    assert features.shape == (1, 64, size[0] // 14, size[1] // 14)


def test_local_weights_take_precedence_over_a_hub_tag(tmp_path, monkeypatch):
    _, _, path = _write_birder_weights(tmp_path, monkeypatch)
    backbone = BirderBackbone(TINY_NETWORK, config=TINY_CONFIG, weights=str(path), pretrained="capi")
    assert backbone.pixel_mean.flatten().tolist() == pytest.approx(get_rgb_stats("imagenet")["mean"])


def test_size_not_multiple_of_patch_is_refused_not_cropped():
    backbone = BirderBackbone(TINY_NETWORK, config=TINY_CONFIG)
    with pytest.raises(ValueError, match="multiple of the patch size 14"):
        backbone(torch.rand(1, 3, 230, 224))


def test_weights_that_do_not_fit_list_the_keys(tmp_path, monkeypatch):
    _, _, path = _write_birder_weights(tmp_path, monkeypatch)
    with pytest.raises(WeightsFileError) as error:
        BirderBackbone("rope_vit_reg8_so150m_p14_swiglu_rms_ap", config=TINY_CONFIG, weights=str(path))
    message = str(error.value)
    assert str(path) in message and "Missing key" in message and "attn_pool" in message


def test_missing_and_corrupt_weights_files_are_named(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        BirderBackbone(TINY_NETWORK, config=TINY_CONFIG, weights=str(missing))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsFileError, match="corrupt.pt"):
        BirderBackbone(TINY_NETWORK, config=TINY_CONFIG, weights=str(corrupt))


def test_a_weights_file_that_needs_more_than_weights_only_loading_runs_nothing(tmp_path, monkeypatch):
    """birder reads .pt files weights-only: a file with code in it is refused, in one line, unrun."""
    _, _, path = _write_birder_weights(tmp_path, monkeypatch)
    weights = torch.load(path, weights_only=True)
    weights["signature"] = Payload(tmp_path / "ran")
    torch.save(weights, path)
    with pytest.raises(WeightsFileError) as error:
        BirderBackbone(TINY_NETWORK, config=TINY_CONFIG, weights=str(path))
    assert str(error.value) == (
        f"Weights file {path} cannot be loaded weights-only: it holds pickled Python objects (io.open) that "
        "loading would import and call, and vitdense loads only tensors and plain data. Nothing in it was "
        "run. Use a weights file written by birder (its hub, or fs_ops.checkpoint_model)"
    )
    assert not (tmp_path / "ran").exists()


def test_pretrained_offline_says_which_file_to_fetch_and_where(monkeypatch):
    import birder

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(birder, "load_pretrained_model", offline)
    with pytest.raises(RuntimeError) as error:
        BirderBackbone(pretrained="capi")
    message = str(error.value)
    assert "rope_vit_reg8_so150m_p14_swiglu_rms_avg_capi.pt" in message
    assert "https://" in message and "weights=" in message


@pytest.mark.parametrize(("freeze", "frozen_blocks"), [("none", []), (1, [0]), ("all", [0, 1])])
def test_freezing_keeps_frozen_parts_in_eval_without_gradients(freeze, frozen_blocks):
    backbone = BirderBackbone(TINY_NETWORK, config=TINY_CONFIG, freeze=freeze).train()
    embeddings_frozen = freeze != "none"
    assert backbone.net.pos_embedding.requires_grad is not embeddings_frozen
    assert backbone.net.conv_proj.training is not embeddings_frozen
    for index, block in enumerate(backbone.net.encoder.block):
        frozen = index in frozen_blocks
        assert all(p.requires_grad is not frozen for p in block.parameters())
        assert block.training is not frozen


def test_bad_freeze_value():
    with pytest.raises(ValueError, match="freeze must be"):
        BirderBackbone(TINY_NETWORK, config=TINY_CONFIG, freeze=3)


def test_block_index_and_no_weight_decay():
    backbone = BirderBackbone(TINY_NETWORK, config=TINY_CONFIG)
    names = dict(backbone.named_parameters())
    assert backbone.block_index("net.pos_embedding") == 0
    assert backbone.block_index("net.conv_proj.weight") == 0
    assert backbone.block_index("net.encoder.block.1.attn.qkv.weight") == 2
    no_decay = backbone.no_weight_decay()
    assert {"net.pos_embedding", "net.reg_tokens", "net.encoder.block.0.norm1.weight"} <= no_decay
    assert "net.encoder.block.0.attn.qkv.weight" not in no_decay
    assert all(names[name].ndim <= 1 for name in no_decay - {"net.pos_embedding", "net.reg_tokens"})


def test_drop_path_and_grad_checkpointing_switches():
    backbone = BirderBackbone(TINY_NETWORK, config=TINY_CONFIG, drop_path_rate=0.3, grad_checkpointing=True)
    assert backbone.net.config["drop_path_rate"] == 0.3
    images = torch.rand(1, 3, 56, 56)
    backbone(images).sum().backward()
    assert backbone.net.encoder.block[0].attn.qkv.weight.grad is not None


def test_out_indices_concatenate_blocks_on_channels():
    torch.manual_seed(0)
    backbone = BirderBackbone(TINY_NETWORK, config=TINY_CONFIG, out_indices=[0, -1]).eval()
    assert backbone.out_channels == 128
    images = torch.rand(1, 3, 56, 84)
    with torch.no_grad():
        features = backbone(images)
        normalized = (images - backbone.pixel_mean) / backbone.pixel_std
        stages = backbone.net.detection_features(normalized)
    assert features.shape == (1, 128, 4, 6)
    torch.testing.assert_close(features, torch.cat([stages["stage1"], stages["stage2"]], dim=1))
    assert not torch.allclose(stages["stage1"], stages["stage2"])
    # Outputs come in block order, so the indices must be too; a block named twice is a mistake.
    for indices in ([-1, 0], [1, 1], [-1, 1]):
        with pytest.raises(ValueError, match="list each block once, in increasing order"):
            BirderBackbone(TINY_NETWORK, config=TINY_CONFIG, out_indices=indices)


def test_normalisation_statistics_travel_in_the_state_dict(tmp_path):
    """A model restored from a checkpoint without its weights file keeps the file's statistics."""
    trained = BirderBackbone(TINY_NETWORK, config=TINY_CONFIG)
    trained.pixel_mean.fill_(0.25)
    with skip_weights_loading():
        restored = BirderBackbone(TINY_NETWORK, config=TINY_CONFIG, weights=str(tmp_path / "moved.pt"))
    restored.load_state_dict(trained.state_dict())
    assert restored.pixel_mean.flatten().tolist() == [0.25, 0.25, 0.25]


def test_attention_runs_as_one_fused_kernel_per_block():
    # birder calls F.scaled_dot_product_attention without a mask, so PyTorch picks a fused kernel (flash
    # attention on the CPU here; flash / cuDNN / memory-efficient on a GPU): no (tokens x tokens) matrix of
    # attention weights is materialised.
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.__name__)
            return func(*args, **(kwargs or {}))

    backbone = BirderBackbone(TINY_NETWORK, config=TINY_CONFIG).eval()
    with torch.no_grad(), Ops() as ops:
        backbone(torch.rand(1, 3, 56, 56))
    fused = [name for name in ops.names if name.startswith("_scaled_dot_product")]
    assert len(fused) == TINY_CONFIG["num_layers"]
    assert "_softmax" not in ops.names and "bmm" not in ops.names


def _block_forwards(backbone, images, monkeypatch):
    """The birder blocks whose forward ran in one training step (in call order), and the gradients."""
    block_type = type(registry.net_factory(TINY_NETWORK, 0, config=TINY_CONFIG).encoder.block[0])
    forward = block_type.forward
    calls = []

    def counting(self, *args, **kwargs):
        calls.append(self)
        return forward(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(block_type, "forward", counting)
        backbone(images).square().sum().backward()
    return calls, {name: param.grad for name, param in backbone.named_parameters()}


@pytest.mark.parametrize(
    ("grad_checkpointing", "out_indices", "forwards_per_block"),
    [(1, None, [2, 1]), (True, None, [2, 2]), (True, [0, -1], [2, 2]), (1, [0, -1], [2, 1])],
)
def test_grad_checkpointing_recomputes_exactly_the_chosen_blocks_with_the_same_gradients(
    grad_checkpointing, out_indices, forwards_per_block, monkeypatch
):
    """Also with out_indices, where birder's own set_grad_checkpointing would recompute nothing."""
    torch.manual_seed(0)
    plain = BirderBackbone(TINY_NETWORK, config=TINY_CONFIG, out_indices=out_indices)
    checkpointed = BirderBackbone(
        TINY_NETWORK, config=TINY_CONFIG, out_indices=out_indices, grad_checkpointing=grad_checkpointing
    )
    checkpointed.load_state_dict(plain.state_dict())
    assert list(checkpointed.state_dict()) == list(plain.state_dict())
    names = [name for name, _ in checkpointed.named_parameters()]
    assert names == [name for name, _ in plain.named_parameters()]

    images = torch.rand(2, 3, 56, 56)
    _, expected = _block_forwards(plain, images, monkeypatch)
    calls, grads = _block_forwards(checkpointed, images, monkeypatch)
    blocks = [b.block if isinstance(b, CheckpointedBlock) else b for b in checkpointed.net.encoder.block]
    assert [sum(call is block for call in calls) for block in blocks] == forwards_per_block
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected[name], msg=name)


def test_grad_checkpointing_survives_a_deep_copy_and_bad_values_are_refused():
    partial = BirderBackbone(TINY_NETWORK, config=TINY_CONFIG, grad_checkpointing=1)
    copied = copy.deepcopy(partial).net.encoder.block[0]
    # The copy runs the copied block, on the copy's own parameters.
    assert copied.block.attn is copied.attn and copied.attn is not partial.net.encoder.block[0].attn
    with pytest.raises(ValueError, match="grad_checkpointing"):
        BirderBackbone(TINY_NETWORK, config=TINY_CONFIG, grad_checkpointing=3)


def test_a_misspelt_config_key_is_refused_with_the_valid_keys():
    message = (
        r"config keys \['hiden_dim'\] are not read by birder's .*did you mean 'hiden_dim' -> 'hidden_dim'.*"
        r"Valid keys: .*mlp_dim.*num_layers"
    )
    with pytest.raises(ValueError, match=message):
        BirderBackbone(TINY_NETWORK, config={**TINY_CONFIG, "hiden_dim": 64})


def test_none_as_a_string_means_no_weights():
    """What `...pretrained=null` on the command line gives (see tests/test_cli.py)."""
    for value in ("None", "null"):
        backbone = BirderBackbone(TINY_NETWORK, config=TINY_CONFIG, weights=value, pretrained=value)
        assert backbone.pixel_mean.flatten().tolist() == pytest.approx(get_rgb_stats("birder")["mean"])
        BirderBackbone(TINY_NETWORK, config=TINY_CONFIG, pretrained=value)


def test_config_keys_that_no_registered_config_sets_are_accepted():
    config = {**TINY_CONFIG, "attention_dropout": 0.1, "rope_temperature": 50.0, "pos_embed_antialias": True}
    backbone = BirderBackbone(TINY_NETWORK, config=config)
    assert backbone.net.config["rope_temperature"] == 50.0


def test_config_keys_are_not_checked_when_the_network_hides_its_reads():
    class CopiesItsConfig(torch.nn.Module):
        config = {"hidden_dim": 8}

        def __init__(self, input_channels, num_classes, *, config=None):
            super().__init__()
            self.config = {**type(self).config, **(config or {})}
            self.hidden_dim = self.config["hidden_dim"]

    assert _config_keys_read(CopiesItsConfig, {"hiden_dim": 8}) is None


def test_final_norm_gives_birders_normed_tokens_from_the_weights_file(tmp_path, monkeypatch):
    net, rgb_stats, path = _write_birder_weights(tmp_path, monkeypatch)
    backbone = BirderBackbone(
        TINY_NETWORK, config=TINY_CONFIG, weights=str(path), out_indices=[0, -1], final_norm=True
    ).eval()
    # birder's key for the norm, under the backbone's `net.`: the same as in birder's weights files.
    assert "norm.weight" in net.state_dict()
    torch.testing.assert_close(backbone.state_dict()["net.norm.weight"], net.norm.weight)

    images = torch.rand(2, 3, 224, 224)
    mean = torch.tensor(rgb_stats["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(rgb_stats["std"]).view(1, 3, 1, 1)
    normalized = (images - mean) / std
    both_blocks = registry.net_factory(TINY_NETWORK, 0, config={**TINY_CONFIG, "out_indices": [0, 1]})
    both_blocks.load_state_dict(net.state_dict(), strict=False)
    with torch.no_grad():
        features = backbone(images)
        tokens = net.forward_features(normalized)[:, net.num_special_tokens :]  # birder's own: final norm on
        first_block = both_blocks.detection_features(normalized)["stage1"]
    assert features.shape == (2, 128, 16, 16)
    torch.testing.assert_close(features[:, 64:], tokens.transpose(1, 2).reshape(2, 64, 16, 16))
    first_block_normed = net.norm(first_block.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    torch.testing.assert_close(features[:, :64], first_block_normed)


@pytest.mark.parametrize(("freeze", "norm_trains"), [("none", True), (2, True), ("all", False)])
def test_the_final_norm_is_frozen_with_everything_else_only(freeze, norm_trains):
    backbone = BirderBackbone(TINY_NETWORK, config=TINY_CONFIG, final_norm=True, freeze=freeze)
    assert backbone.net.norm.weight.requires_grad is norm_trains
    # Layer decay: after the last block, at the heads' depth.
    assert backbone.block_index("net.norm.weight") == TINY_CONFIG["num_layers"] + 1
    assert "net.norm.weight" in backbone.no_weight_decay()


def test_final_norm_without_a_final_norm_is_refused():
    with pytest.raises(ValueError, match="final_norm: .* has no final norm"):
        BirderBackbone(TINY_NETWORK, config={**TINY_CONFIG, "post_norm": False}, final_norm=True)
    assert "net.norm.weight" not in BirderBackbone(TINY_NETWORK, config=TINY_CONFIG).state_dict()


def test_the_pretraining_grid_keeps_224px_features_and_maps_larger_inputs():
    torch.manual_seed(0)
    extrapolated = BirderBackbone(TINY_NETWORK, config=TINY_CONFIG).eval()
    mapped = BirderBackbone(TINY_NETWORK, config=TINY_CONFIG, pt_grid_size=[16, 16]).eval()
    with torch.no_grad():
        for block in extrapolated.net.encoder.block:
            # At initialisation attention is almost uniform: positions would hardly matter.
            block.attn.qkv.weight.mul_(10)
    mapped.load_state_dict(extrapolated.state_dict())
    with torch.no_grad():
        at_224 = torch.rand(1, 3, 224, 224)
        assert torch.equal(mapped(at_224), extrapolated(at_224))  # bit for bit: the same positions
        at_448 = torch.rand(1, 3, 448, 448)
        assert not torch.allclose(mapped(at_448), extrapolated(at_448), atol=0.1)
    with pytest.raises(ValueError, match=r"pt_grid_size must be .*\[16, 16\]"):
        BirderBackbone(TINY_NETWORK, config=TINY_CONFIG, pt_grid_size=[16])
