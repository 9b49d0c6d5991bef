"""The base of the kit's tasks: the Lightning hooks every task shares, each handing its job to the module
that does it (optimizer setup, checkpoint checks, random streams, skipped steps, reports)."""

from pathlib import Path
from typing import Any

import torch
from lightning import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from vitdense.compat.lightning import attached_trainer
from vitdense.tasks.checkpoint_checks import (
    check_checkpoint_shapes,
    check_checkpoint_task,
    warn_if_classes_differ,
)
from vitdense.tasks.label_space import CHECKPOINT_KEY, LabelSpace
from vitdense.tasks.monitor_check import check_monitors
from vitdense.tasks.nonfinite_steps import NonFiniteSteps
from vitdense.tasks.optimizer_setup import build_optimizers
from vitdense.tasks.reports import strict_json, write_report
from vitdense.tasks.rng_states import capture_rng_states, gather_rng_states, restore_rng_states

# strict_json and check_checkpoint_task are imported from here by vitdense.cli and coco_evaluator.
__all__ = ["VitDenseTask", "check_checkpoint_task", "strict_json"]


class VitDenseTask(LightningModule):
    """Base of the kit's LightningModules.

    Subclasses build ``self.model`` and set ``self.final_metrics`` after each evaluation; the CLI prints the
    latter as the run's last line.

    Args:
        optimizer: builds the optimizer from param groups (defaults: AdamW).
        lr_scheduler: builds a per-step scheduler from the optimizer (e.g. ``WarmupMultiStepLR``).
        layer_decay: layer-wise lr decay over the ViT blocks (1.0: off).
        max_nonfinite_in_a_row: a step whose loss is NaN or infinite is skipped with a warning and counted
            (``train/skipped_steps``); this many in a row abort the run.
        torch_compile: compile the part of the model whose shapes do not depend on the data
            (:meth:`compiled_part`) with ``torch.compile`` when the trainer sets the model up. Shapes are
            static (``dynamic=False``): each new batch shape compiles once more, so it pays where the canvas
            is fixed (training crops; subclasses say where evaluation stays eager). Off in tests; the
            speed-up is measured in ``benchmarks/``.
    """

    label_space: LabelSpace | None = None
    """The classes the task predicts; None for a task without classes. Saved in checkpoints."""
    _label_space_from_data = False
    """Set by a subclass's ``setup`` that took :attr:`label_space` from the datamodule: a checkpoint loaded
    then (evaluating on that data) only has its classes compared, and the datamodule's govern."""

    def __init__(
        self,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        layer_decay: float = 1.0,
        max_nonfinite_in_a_row: int = 10,
        torch_compile: bool = False,
    ) -> None:
        super().__init__()
        self.nonfinite_steps = NonFiniteSteps(max_nonfinite_in_a_row)
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.layer_decay = layer_decay
        self.torch_compile = torch_compile
        # Set when configure_model compiles compiled_part(): torch does not say so in its public interface.
        self._compiled_by_kit = False
        # The latest evaluation's metrics; the CLI prints them as the run's last line.
        self.final_metrics: dict[str, Any] = {}
        self._checkpoint_step: int | None = None
        self._rng_states_to_restore: dict[str, Any] | None = None

    def configure_model(self) -> None:
        if self.torch_compile and not self._compiled_by_kit:
            # In place: parameter names, checkpoints and optimizer groups stay those of the eager module.
            self.compiled_part().compile(dynamic=False)
            self._compiled_by_kit = True

    def compiled_part(self) -> torch.nn.Module:
        """What ``torch_compile`` compiles: by default the backbone (ViT + feature pyramid)."""
        return self.model.backbone

    @property
    def compiled(self) -> bool:
        """Whether :meth:`compiled_part` runs through ``torch.compile`` (see ``torch_compile``)."""
        return self._compiled_by_kit

    @property
    def skipped_steps(self) -> int:
        """Training steps skipped in this run (resumed runs included) for a non-finite loss."""
        return self.nonfinite_steps.skipped

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["skipped_steps"] = self.skipped_steps
        # The model draws random numbers in training (proposal sampling, drop path): a resumed run continues
        # the same streams, each process its own (they part after the first step: each draws as many numbers
        # as its images have proposals). Every process saves a checkpoint (Lightning writes rank 0's).
        states = capture_rng_states()
        per_rank = gather_rng_states(states)
        if per_rank is not None:
            checkpoint["rng_states_per_rank"] = per_rank
        checkpoint["rng_states"] = states
        if self.label_space is not None:
            checkpoint[CHECKPOINT_KEY] = self.label_space.to_checkpoint()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        class_path = (checkpoint.get("hyper_parameters") or {}).get("_class_path")
        if isinstance(class_path, str):
            # Fail at once on a checkpoint of another task (a detector's for a segmentation run, or the
            # reverse), which would otherwise load part of its weights or fail later on the data's shapes.
            check_checkpoint_task(class_path, type(self), self.checkpoint_name())
        check_checkpoint_shapes(
            checkpoint,
            self.state_dict(),
            self.hparams.get("num_classes"),
            self.label_space,
            self.checkpoint_name(),
        )
        self._checkpoint_step = checkpoint.get("global_step")
        self.nonfinite_steps.skipped = checkpoint.get("skipped_steps", 0)
        per_rank = checkpoint.get("rng_states_per_rank")
        trainer = attached_trainer(self)
        if per_rank is not None and trainer is not None and len(per_rank) == trainer.world_size:
            self._rng_states_to_restore = per_rank[self.global_rank]
        else:  # saved by one process, or resumed on another number of them: rank 0's streams
            self._rng_states_to_restore = checkpoint.get("rng_states")
        if self.label_space is None:
            return
        if self._label_space_from_data:
            warn_if_classes_differ(checkpoint, self.label_space, self.checkpoint_name())
        else:
            self._set_label_space(
                LabelSpace.from_checkpoint(checkpoint, self.label_space, self.checkpoint_name())
            )

    def _set_label_space(self, label_space: LabelSpace) -> None:
        """Take ``label_space`` as the task's classes (a subclass also updates what depends on them)."""
        self.label_space = label_space

    def checkpoint_name(self) -> str:
        """The checkpoint being loaded, for messages: its path when the trainer has it."""
        path = getattr(self.trainer, "ckpt_path", None) if attached_trainer(self) is not None else None
        return f"checkpoint {path}" if path else "the checkpoint"

    def on_train_end(self) -> None:
        # Evaluations after fit (the CLI's of the final weights) score the weights fit left, not those of the
        # checkpoint it resumed from.
        self._checkpoint_step = self.global_step

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Restored here, not on load: setting up the DataLoaders in between draws from torch's generator,
        # which an uninterrupted run does not do mid-epoch.
        states, self._rng_states_to_restore = self._rng_states_to_restore, None
        if states is not None:
            restore_rng_states(states)

    def finite_or_skip(
        self, loss: torch.Tensor, losses: dict[str, torch.Tensor], targets: list[dict[str, Any]]
    ) -> torch.Tensor | None:
        """``loss``, or None (Lightning then skips the step) when it is not finite on any process.

        Every process takes the same decision, so DDP never waits for a backward pass that one process
        skipped. The warning names the loss terms that were not finite and the batch's images.
        """
        nonfinite = ~torch.isfinite(loss.detach())
        if self.trainer.world_size > 1:
            nonfinite = self.trainer.strategy.reduce(nonfinite.float(), reduce_op="sum") > 0
        if not bool(nonfinite):
            self.nonfinite_steps.finite()
            return loss
        message = self.nonfinite_steps.skip(self.global_step, loss, losses, targets)
        self.log("train/skipped_steps", float(self.skipped_steps), rank_zero_only=True)
        self.nonfinite_steps.stop_if_too_many(message)
        return None

    @property
    def trained_steps(self) -> int:
        """Optimizer steps behind the current weights: the trainer's while fitting, else the checkpoint's."""
        fitting = attached_trainer(self) is not None and self.trainer.state.fn == "fit"
        if fitting or self._checkpoint_step is None:
            return self.global_step
        return int(self._checkpoint_step)

    def save_config(self, *callables: str) -> None:
        """Keep the init args that can be saved (the caller has just run ``save_hyperparameters()``).

        Under the CLI, the hyper-parameters are the run's own config, where model parts such as the detector
        are class paths with init args: a checkpoint then rebuilds the module with ``load_from_checkpoint``
        and no YAML. Parts passed as Python callables cannot be saved and are dropped; pass them again to
        ``load_from_checkpoint``.
        """
        for name in callables:
            if callable(self.hparams.get(name)):
                del self.hparams[name]

    def write_report(self, name: str, content: Any) -> Path | None:
        """Write ``content`` to the log directory on rank 0 (:func:`~vitdense.tasks.reports.write_report`);
        every process must call it."""
        return write_report(self.trainer, name, content)

    def evaluation_metrics(self) -> list[str]:
        """The names evaluation logs after ``val/`` and ``test/`` (none: monitors are not checked)."""
        return []

    def on_fit_start(self) -> None:
        check_monitors(
            self.trainer.callbacks,
            [f"val/{name}" for name in self.evaluation_metrics()],
            type(getattr(self, "model", self)).__name__,
        )

    def configure_optimizers(self) -> dict[str, Any]:
        return build_optimizers(
            self, self.optimizer_factory, self.lr_scheduler_factory, self.layer_decay, attached_trainer(self)
        )
