"""Parameter groups for layer-wise lr decay and learning-rate schedules with warmup."""

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from vitdense.backbones.birder_backbone import BirderBackbone


def layer_decay_param_groups(model: nn.Module, layer_decay: float = 1.0) -> list[dict]:
    """Split trainable parameters into groups by ViT depth and by whether they take weight decay.

    A parameter at depth ``d`` (0 for the ViT's embeddings and tokens, ``i + 1`` for block ``i``,
    ``num_blocks + 1`` for everything outside the ViT: pyramid and heads) gets the learning rate scaled by
    ``layer_decay ** (num_blocks + 1 - d)``, as in BEiT and ViTDet. 1-d tensors (norm scales, biases) and the
    ViT's position embedding and register tokens take no weight decay; the other groups keep the
    optimizer's own ``weight_decay``.

    Args:
        model: a module holding one :class:`BirderBackbone` somewhere in its tree.
        layer_decay: per-block decay factor; 1.0 disables it.

    Returns:
        Param groups with an ``lr_scale`` key (apply with :func:`apply_lr_scale` once the optimizer exists)
        and ``weight_decay = 0.0`` on the groups that take none.
    """
    vits = [
        (prefix, module) for prefix, module in model.named_modules() if isinstance(module, BirderBackbone)
    ]
    if len(vits) > 1:
        raise ValueError(f"Expected at most one BirderBackbone, found {[prefix for prefix, _ in vits]}")
    prefix, vit = vits[0] if vits else ("", None)
    top = vit.num_blocks + 1 if vit is not None else 0
    vit_no_decay = {f"{prefix}.{name}" for name in vit.no_weight_decay()} if vit is not None else set()

    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        in_vit = vit is not None and name.startswith(prefix + ".")
        depth = vit.block_index(name[len(prefix) + 1 :]) if in_vit else top
        decay = not (param.ndim <= 1 or name in vit_no_decay)
        group = groups.setdefault(
            (depth, decay), {"params": [], "param_names": [], "lr_scale": layer_decay ** (top - depth)}
        )
        if not decay:
            group["weight_decay"] = 0.0
        group["params"].append(param)
        group["param_names"].append(name)
    return [groups[key] for key in sorted(groups)]


def apply_lr_scale(optimizer: torch.optim.Optimizer) -> None:
    """Scale each group's lr by its ``lr_scale``; call before building the scheduler."""
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * group.get("lr_scale", 1.0)
        group["initial_lr"] = group["lr"]


def _warmup_factor(step: int, warmup_steps: int, warmup_factor: float) -> float:
    if step >= warmup_steps:
        return 1.0
    alpha = step / warmup_steps
    return warmup_factor * (1.0 - alpha) + alpha


class _WarmupDecayLR(LambdaLR):
    """Linear warmup, then ``min_factor + (1 - min_factor) * decay(progress)`` times the lr, ``progress``
    going from 0 after the warmup to 1 at ``total_steps`` (per optimizer step); ``decay`` goes from 1 to 0."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        warmup_steps: int,
        warmup_factor: float,
        min_factor: float,
        decay: Callable[[float], float],
    ) -> None:
        if total_steps <= warmup_steps:
            raise ValueError(f"total_steps ({total_steps}) must exceed warmup_steps ({warmup_steps})")
        self.total_steps = total_steps

        def factor(step: int) -> float:
            progress = min(max(step - warmup_steps, 0) / (total_steps - warmup_steps), 1.0)
            decayed = min_factor + (1.0 - min_factor) * decay(progress)
            return _warmup_factor(step, warmup_steps, warmup_factor) * decayed

        super().__init__(optimizer, factor)


class WarmupMultiStepLR(LambdaLR):
    """Linear warmup from ``warmup_factor * lr``, then lr x ``gamma`` at each milestone (per optimizer step).

    Args:
        optimizer: the optimizer.
        milestones: steps at which the lr drops.
        gamma: drop factor.
        warmup_steps: linear warmup length in steps.
        warmup_factor: lr multiplier at step 0.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        milestones: Sequence[int],
        gamma: float = 0.1,
        warmup_steps: int = 250,
        warmup_factor: float = 0.001,
    ) -> None:
        if list(milestones) != sorted(milestones):
            raise ValueError(f"milestones must increase, got {milestones}")
        self.milestones = list(milestones)

        def factor(step: int) -> float:
            drops = sum(step >= milestone for milestone in self.milestones)
            return _warmup_factor(step, warmup_steps, warmup_factor) * gamma**drops

        super().__init__(optimizer, factor)


class WarmupCosineLR(_WarmupDecayLR):
    """Linear warmup, then cosine decay to ``min_factor * lr`` at ``total_steps`` (per optimizer step).

    Args:
        optimizer: the optimizer.
        total_steps: length of the whole schedule (the trainer's ``max_steps``).
        warmup_steps: linear warmup length in steps.
        warmup_factor: lr multiplier at step 0.
        min_factor: lr multiplier at the end.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        warmup_steps: int = 250,
        warmup_factor: float = 0.001,
        min_factor: float = 0.0,
    ) -> None:
        def cosine(progress: float) -> float:
            return 0.5 * (1.0 + math.cos(math.pi * progress))

        super().__init__(optimizer, total_steps, warmup_steps, warmup_factor, min_factor, cosine)


class WarmupPolyLR(_WarmupDecayLR):
    """Linear warmup, then decay by ``(1 - progress) ** power`` to ``min_factor * lr`` at ``total_steps``.

    Args:
        optimizer: the optimizer.
        total_steps: length of the whole schedule (the trainer's ``max_steps``).
        warmup_steps: linear warmup length in steps.
        warmup_factor: lr multiplier at step 0.
        power: exponent of the decay (1.0: linear, as mmsegmentation's ViT recipes; 0.9 the classic one).
        min_factor: lr multiplier at the end.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        warmup_steps: int = 1500,
        warmup_factor: float = 1e-6,
        power: float = 1.0,
        min_factor: float = 0.0,
    ) -> None:
        def poly(progress: float) -> float:
            return (1.0 - progress) ** power

        super().__init__(optimizer, total_steps, warmup_steps, warmup_factor, min_factor, poly)
