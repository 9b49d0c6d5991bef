"""birder's plain ViT as a single-map dense feature extractor."""

import difflib
import logging
import pickle
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import birder
import torch
from birder.common import fs_ops
from birder.common.lib import get_pretrained_model_url
from birder.conf import settings
from birder.data.transforms.classification import get_rgb_stats
from birder.model_registry import registry
from torch import nn

from vitdense.backbones.checkpointed_block import CheckpointedBlock

from vitdense.checkpoint_trust import weights_only_refusal

logger = logging.getLogger(__name__)

DEFAULT_NETWORK = "rope_vit_reg8_so150m_p14_swiglu_rms_avg"

# Tokens and embeddings that carry no weight decay, besides every 1-d tensor (norm scales, biases).
_NO_DECAY_NAMES = ("pos_embedding", "reg_tokens", "class_token")
_BLOCK_PATTERN = re.compile(r"^net\.encoder\.block\.(\d+)\.")


_skipping_weights: ContextVar[bool] = ContextVar("_skipping_weights", default=False)


@contextmanager
def skip_weights_loading() -> Iterator[None]:
    """Inside, :class:`BirderBackbone` skips its ``weights`` / ``pretrained`` loading.

    For models about to be restored from a checkpoint, which holds every weight and the normalisation
    statistics (a moved weights file or an offline machine then does not stop ``validate``, ``test``,
    ``predict`` or a resume), and for commands that never run the model (``vitdense check-data``).
    """
    token = _skipping_weights.set(True)
    try:
        yield
    finally:
        _skipping_weights.reset(token)


class WeightsFileError(ValueError):
    """A weights file that cannot be read or does not fit the requested network."""


class BirderBackbone(nn.Module):
    """A birder ViT that maps an image batch to its last block's patch tokens as one map.

    The network is built by name through birder's registry (``config`` overrides sizes, which is how
    tests get a tiny member of the same family), then optionally loaded from a local weights file or,
    only when ``pretrained`` is given, from birder's hub. The classification head is removed, and so is the
    final norm unless ``final_norm`` keeps it: the simple feature pyramid normalises each level itself, as in
    ViTDet.

    Args:
        network: birder network name.
        config: overrides merged into the registered config (e.g. ``{"hidden_dim": 64, "num_layers": 2}``);
            a key the network does not read is refused (birder would silently ignore it).
        weights: a local ``.pt`` or ``.safetensors`` file written by birder. Its ``rgb_stats`` become the
            normalisation statistics. ``"None"`` and ``"null"`` mean None, for ``pretrained`` too.
        pretrained: a birder weights tag (``"capi"``) to download from birder's hub when not cached in
            birder's models directory (``./models``). Ignored when ``weights`` is given.
        freeze: ``"none"``; ``"all"`` (the final norm included); or an int K that freezes the patch embedding,
            position embedding, register tokens and the first K blocks. Frozen parts stay in eval mode with no
            gradients.
        drop_path_rate: overrides the config's stochastic depth rate (linearly increasing over blocks).
        grad_checkpointing: recompute block activations in the backward pass instead of keeping them: true for
            every block (about a third more ViT compute), or an int K for the first K blocks only (each block
            holds about 1 / num_blocks of the ViT's activation memory, and costs that share of recompute).
        out_indices: blocks whose outputs are concatenated on channels (negative counts from the end), as in
            DINOv2's multi-layer linear probe; default: the last block only.
        final_norm: pass every token of every selected block's output through the ViT's final norm (birder's
            ``norm``, loaded from the weights file with the rest and frozen with it by ``freeze: all``), as
            DINOv2's linear probes do. The norm rescales each token by its own statistics, which a probe's
            BatchNorm (one statistic per channel over the batch) cannot do. Off: the blocks' raw residual
            stream, for heads that normalise each level themselves (the simple feature pyramid).
        pt_grid_size: the pretraining grid in patches, ``(height, width)``: ``(16, 16)`` for 224 px at patch
            14. RoPE then places the patches of an ``h x w`` grid at positions ``(i * 16 / h, j * 16 / w)``,
            inside the pretraining range, at any input size. Default (birder's): positions ``(i, j)``, which
            go past the pretraining range on inputs larger than 224 px (extrapolation). At the pretraining
            size both give the same features, bit for bit. The absolute position embedding is interpolated
            from the network's own 224 px grid either way.
    """

    def __init__(
        self,
        network: str = DEFAULT_NETWORK,
        config: dict[str, Any] | None = None,
        weights: str | None = None,
        pretrained: str | None = None,
        freeze: Literal["none", "all"] | int = "none",
        drop_path_rate: float | None = None,
        grad_checkpointing: bool | int = False,
        out_indices: list[int] | None = None,
        final_norm: bool = False,
        pt_grid_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        # `...pretrained=null` on the command line, over a recipe's value inside the detector callable,
        # reaches here as the string "None" (jsonargparse); YAML reads `None` as a string too.
        weights, pretrained = (
            None if value in ("None", "null") else value for value in (weights, pretrained)
        )
        if _skipping_weights.get() and (weights is not None or pretrained is not None):
            logger.info(f"Not loading weights={weights!r} / pretrained={pretrained!r} (skip_weights_loading)")
            weights = pretrained = None
        if weights is not None and pretrained is not None:
            # Recipes name the hub tag; a local file given on top (e.g. from the command line) replaces it.
            logger.info(f"Loading {weights}; pretrained={pretrained!r} is ignored")
            pretrained = None

        config = dict(config or {})
        if drop_path_rate is not None:
            config["drop_path_rate"] = drop_path_rate
        if out_indices is not None:
            if not out_indices:
                raise ValueError("out_indices must name at least one block, or be null for the last one")
            config["out_indices"] = list(out_indices)
        if pt_grid_size is not None:
            if len(pt_grid_size) != 2 or not all(isinstance(n, int) and n > 0 for n in pt_grid_size):
                raise ValueError(
                    "pt_grid_size must be the pretraining grid in patches, [height, width] (e.g. [16, 16] "
                    f"for 224 px at patch 14), got {pt_grid_size!r}"
                )
            config["pt_grid_size"] = tuple(pt_grid_size)
        _check_config_keys(network, config)

        if weights is not None:
            net, rgb_stats = _load_weights_file(network, Path(weights), config)
        elif pretrained is not None:
            net, rgb_stats = _load_pretrained(network, pretrained, config)
        else:
            net = registry.net_factory(network, 0, config=config or None)
            rgb_stats = get_rgb_stats("birder")

        if net.out_indices is not None and net.out_indices != sorted(set(net.out_indices)):
            raise ValueError(
                f"out_indices name blocks {net.out_indices} of {net.num_layers}: list "
                "each block once, in increasing order (their outputs are concatenated in block order)"
            )
        norm = net.norm
        net.strip_for_detection_features()
        if final_norm:
            if isinstance(norm, nn.Identity):
                raise ValueError(
                    f"final_norm: {network} has no final norm over its tokens (its config sets post_norm "
                    "false, or norm_after_pool true, which norms the pooled embedding only); set "
                    "final_norm: false"
                )
            # Under birder's own name, so that its weights (net.norm.*) load and save as in birder's files.
            net.norm = norm
        net.set_dynamic_size(True)
        if getattr(net, "class_token", None) is not None:
            raise ValueError(f"{network} has a class token; vitdense expects a ViT without one (e.g. *_avg)")

        self.net = net
        self.network = network
        self.final_norm = final_norm
        self.out_indices: list[int] | None = net.out_indices
        self.out_channels: int = net.embedding_size * (len(net.out_indices) if net.out_indices else 1)
        self.stride: int = net.patch_size
        self.size_divisibility: int = net.patch_size
        self.num_blocks: int = net.num_layers
        # Saved in checkpoints: a model restored without its weights file keeps the file's statistics.
        self.register_buffer(
            "pixel_mean", torch.tensor(rgb_stats["mean"], dtype=torch.float32).view(1, 3, 1, 1)
        )
        self.register_buffer(
            "pixel_std", torch.tensor(rgb_stats["std"], dtype=torch.float32).view(1, 3, 1, 1)
        )

        self._set_grad_checkpointing(grad_checkpointing)

        self.frozen_depth = self._parse_freeze(freeze)
        for name, param in self.named_parameters():
            if self._is_frozen(name):
                param.requires_grad_(False)

    def _set_grad_checkpointing(self, setting: bool | int) -> None:
        # Not birder's set_grad_checkpointing: it checkpoints all blocks or none, and only when the encoder
        # runs as a whole, which detection_features skips for out_indices (nothing would be recomputed).
        if setting is False or setting == 0:
            return
        if setting is True:
            setting = self.num_blocks
        if not isinstance(setting, int) or not 0 < setting <= self.num_blocks:
            raise ValueError(
                f"grad_checkpointing must be true, false or a number of blocks in [0, {self.num_blocks}], "
                f"got {setting!r}"
            )
        blocks = self.net.encoder.block
        for index in range(setting):
            blocks[index] = CheckpointedBlock(blocks[index])

    def _parse_freeze(self, freeze: Literal["none", "all"] | int) -> int:
        """Depth (see :meth:`block_index`) up to which parameters are frozen; -1 for nothing at all."""
        if freeze == "none":
            return -1
        if freeze == "all":
            return self.num_blocks + 1
        if isinstance(freeze, int) and not isinstance(freeze, bool) and 0 <= freeze <= self.num_blocks:
            return freeze
        raise ValueError(f"freeze must be 'none', 'all' or an int in [0, {self.num_blocks}], got {freeze!r}")

    def _is_frozen(self, param_name: str) -> bool:
        return self.block_index(param_name) <= self.frozen_depth

    def block_index(self, param_name: str) -> int:
        """Depth of a parameter for layer-wise lr decay: 0 for embeddings and tokens, i + 1 for block i,
        num_blocks + 1 for the final norm (after the last block, at the heads' depth)."""
        match = _BLOCK_PATTERN.match(param_name)
        if match is not None:
            return int(match.group(1)) + 1
        if param_name.startswith("net.encoder.block."):
            raise ValueError(f"Cannot read the block index of {param_name}")
        if param_name.startswith("net.norm."):
            return self.num_blocks + 1
        return 0

    def no_weight_decay(self) -> set[str]:
        """Names of the parameters that take no weight decay: 1-d tensors, position embedding, tokens."""
        return {
            name
            for name, param in self.named_parameters()
            if param.ndim <= 1 or name.rsplit(".", 1)[-1] in _NO_DECAY_NAMES
        }

    def train(self, mode: bool = True) -> "BirderBackbone":
        """Switch modes, keeping frozen parts in eval mode (no dropout or drop-path where nothing trains)."""
        super().train(mode)
        if mode and self.frozen_depth >= 0:
            for module in (self.net.conv_proj, self.net.patch_embed):
                module.eval()
            for block in self.net.encoder.block[: self.frozen_depth]:
                block.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Encode a batch.

        Args:
            images: float (B, 3, H, W) RGB in [0, 1]; H and W multiples of ``stride`` (14).

        Returns:
            (B, out_channels, H / 14, W / 14) patch features of the last block, or of the ``out_indices``
            blocks concatenated on channels; each token passed through the final norm when ``final_norm``.
        """
        height, width = images.shape[-2:]
        if height % self.stride or width % self.stride:
            raise ValueError(
                f"Input size {height}x{width} is not a multiple of the patch size {self.stride}: birder "
                f"would "
                f"silently drop the last pixels. Pad the batch to a multiple of {self.stride}."
            )
        images = (images - self.pixel_mean.to(images.dtype)) / self.pixel_std.to(images.dtype)
        stages = list(self.net.detection_features(images).values())
        if self.final_norm:
            # The norm acts on the channels of each token: move them last and back.
            stages = [self.net.norm(stage.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) for stage in stages]
        return stages[0] if len(stages) == 1 else torch.cat(stages, dim=1)


class _KeyReadRecorder(dict):
    """A config dict that remembers which keys are looked up."""

    def __init__(self, items: dict[str, Any]) -> None:
        super().__init__(items)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)


def _config_keys_read(net_type: type[nn.Module], config: dict[str, Any]) -> frozenset[str] | None:
    """The config keys a birder network type reads when built with ``config``; None when that cannot be seen.

    A registered birder network is a subclass of its architecture whose class attribute ``config`` holds the
    registered config (``registry.register_model_config``); building it merges ``config`` into a copy of that.
    The probe is a subclass of ``net_type`` whose registered config records the keys looked up, built on the
    meta device (no memory, no initialisation compute) and never registered.
    """
    registered = _KeyReadRecorder(getattr(net_type, "config", None) or {})
    probe_type = type(net_type.__name__, (net_type,), {"config": registered, "auto_register": False})
    with torch.device("meta"):
        probe = probe_type(settings.DEFAULT_NUM_CHANNELS, 0, config=config or None)
    # birder builds from a deep copy of the registered config, which keeps the recorder's type.
    if not isinstance(probe.config, _KeyReadRecorder) or not probe.config.read:
        return None
    return frozenset(probe.config.read)


def _check_config_keys(network: str, config: dict[str, Any]) -> None:
    """Refuse ``config`` keys that birder's ``network`` never reads: birder would silently ignore them."""
    name = network.lower()
    net_type = registry.all_nets.get(registry.name_aliases.get(name, name))
    if net_type is None or not config:
        return  # an unknown name is birder's to report, when the network is built
    valid = _config_keys_read(net_type, config)
    if valid is None:
        logger.warning(
            f"Cannot tell which config keys birder {birder.__version__}'s {network} reads; config keys are "
            "not checked (a misspelt key would be ignored)"
        )
        return
    unknown = sorted(set(config) - valid)
    if unknown:
        guesses = [
            f"{key!r} -> {match[0]!r}"
            for key in unknown
            if (match := difflib.get_close_matches(key, valid, 1))
        ]
        hint = f" (did you mean {', '.join(guesses)}?)" if guesses else ""
        raise ValueError(
            f"BirderBackbone config keys {unknown} are not read by birder's {network}, which would silently "
            f"ignore them{hint}; fix or remove them. Valid keys: {', '.join(sorted(valid))}"
        )


def _load_weights_file(network: str, path: Path, config: dict[str, Any]) -> tuple[nn.Module, dict]:
    if not path.is_file():
        raise FileNotFoundError(
            f"Weights file {path} does not exist. Pass the path of a birder .pt or .safetensors file "
            f"for {network}, or weights=null for random initialisation."
        )
    if path.suffix not in (".pt", ".safetensors"):
        raise WeightsFileError(f"Weights file {path}: expected a birder .pt or .safetensors file")

    try:
        net, info = fs_ops.load_model(
            torch.device("cpu"),
            network,
            path=path,
            config=config or None,
            inference=False,
            st=path.suffix == ".safetensors",
        )
    except pickle.UnpicklingError as error:  # birder loads weights-only: torch refused without running it
        raise WeightsFileError(
            f"Weights file {path} cannot be loaded weights-only: {weights_only_refusal(path)}. Nothing in it "
            "was run. Use a weights file written by birder (its hub, or fs_ops.checkpoint_model)"
        ) from error
    except Exception as error:
        if isinstance(error, RuntimeError) and "state_dict" in str(error):
            # load_state_dict lists the missing, unexpected and mis-shaped keys; keep them and name the file.
            raise WeightsFileError(
                f"Weights file {path} does not fit network {network} (config overrides: {config or 'none'}): "
                f"{error}\nCheck that the file was written for {network} with the same sizes."
            ) from error
        raise WeightsFileError(
            f"Weights file {path} is not a readable birder weights file ({type(error).__name__}: {error}). "
            "Re-download or re-export it with birder."
        ) from error

    for param in net.parameters():
        param.requires_grad_(True)
    return net, info.rgb_stats


def _load_pretrained(network: str, tag: str, config: dict[str, Any]) -> tuple[nn.Module, dict]:
    weights_name = f"{network}_{tag}"
    try:
        model_file, url = get_pretrained_model_url(weights_name, "pt")
    except Exception as error:
        raise ValueError(f"birder has no pretrained weights named {weights_name}") from error

    local = settings.MODELS_DIR.joinpath(model_file)
    try:
        net, info = birder.load_pretrained_model(
            weights_name, inference=False, custom_config=config or None, progress_bar=False
        )
    except RuntimeError as error:
        raise WeightsFileError(
            f"Pretrained weights {local} do not fit {network} with {config}: {error}"
        ) from error
    except Exception as error:
        raise RuntimeError(
            f"Could not get the pretrained weights {weights_name} ({type(error).__name__}: {error}). "
            f"Without network access, download {url} on another machine and put it at {local.resolve()} "
            f"(birder's models directory, relative to the working directory), or pass "
            f"weights=<path to the file> instead of pretrained={tag!r}."
        ) from error

    for param in net.parameters():
        param.requires_grad_(True)
    return net, info.rgb_stats
