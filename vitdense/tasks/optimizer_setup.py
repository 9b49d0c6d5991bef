"""A task's optimizer and per-step lr scheduler, built from the injected factories and checked against the
run's length."""

import logging
from typing import Any

import torch
from lightning import LightningModule, Trainer
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from vitdense.tasks.optim import apply_lr_scale, layer_decay_param_groups

logger = logging.getLogger(__name__)


def check_schedule_length(scheduler: object, trainer: Trainer) -> None:
    """Refuse a run longer than its decaying lr schedule: the steps past its end would train at its floor
    (lr 0 by default), e.g. a finished run resumed with a larger ``max_steps`` alone. Warn of a run shorter
    than its schedule (the lr stops before its floor) or than an lr milestone (no drop).

    Raises:
        ValueError: the trainer runs more optimizer steps than the schedule's ``total_steps``, with the fix.
    """
    steps = trainer.estimated_stepping_batches
    late = [m for m in getattr(scheduler, "milestones", []) if m >= steps]
    if late:
        logger.warning(
            "lr milestones %s are at or after the run's last step %s: the lr never drops there; scale "
            "the milestones with max_steps",
            late,
            steps,
        )
    total = getattr(scheduler, "total_steps", None)
    if total is not None and steps < total:
        logger.warning(
            "the lr schedule ends at total_steps=%s, after the run's %s steps: the lr stops short of its "
            "floor; set total_steps to the run's length",
            total,
            steps,
        )
    if total is not None and steps > total:
        if steps == float("inf"):
            fix = "Bound the run with trainer.max_steps and set total_steps to it."
        else:
            fix = f"Set model.lr_scheduler.init_args.total_steps to {steps}, or shorten the run."
        raise ValueError(
            f"the trainer runs {steps} optimizer steps (max_steps={trainer.max_steps}, max_epochs="
            f"{trainer.max_epochs}) but the lr schedule {type(scheduler).__name__} ends at "
            f"total_steps={total}: the steps past it would train at its floor (min_factor x lr). {fix}"
        )


def build_optimizers(
    module: LightningModule,
    optimizer_factory: OptimizerCallable,
    lr_scheduler_factory: LRSchedulerCallable | None,
    layer_decay: float,
    trainer: Trainer | None,
) -> dict[str, Any]:
    """``configure_optimizers``'s answer: the optimizer over ``module``'s parameter groups (layer-wise lr
    decay, per-group lr scales) and, if given, its scheduler stepped every optimizer step.

    Raises:
        ValueError: a scheduler that needs a metric (``ReduceLROnPlateau``), or one shorter than the run.
    """
    optimizer = optimizer_factory(layer_decay_param_groups(module, layer_decay))
    apply_lr_scale(optimizer)
    if lr_scheduler_factory is None:
        return {"optimizer": optimizer}
    scheduler = lr_scheduler_factory(optimizer)
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        raise ValueError(
            "the lr_scheduler ReduceLROnPlateau needs a metric, but vitdense steps its lr_scheduler "
            "every optimizer step, without one: use a per-step schedule such as "
            "vitdense.tasks.WarmupCosineLR, WarmupMultiStepLR or WarmupPolyLR "
            "(model.init_args.lr_scheduler in the recipe)"
        )
    if trainer is not None:
        check_schedule_length(scheduler, trainer)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
