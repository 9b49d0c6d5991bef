"""What every vitdense task shares: injected optimizer and scheduler, layer-wise lr decay, final metrics."""

import json
import logging
import math
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning import LightningModule
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from vitdense.atomic_write import write_atomically
from vitdense.tasks.optim import apply_lr_scale, layer_decay_param_groups

logger = logging.getLogger(__name__)


def _numpy_state_to_tensors(state: tuple) -> tuple:
    """NumPy's legacy generator state with its key array as a tensor, loadable with ``weights_only``."""
    name, keys, position, has_gauss, cached_gaussian = state
    return name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian


def _numpy_state_from_tensors(state: tuple) -> tuple:
    name, keys, position, has_gauss, cached_gaussian = state
    return name, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian


def warn_if_classes_differ(checkpoint: dict[str, Any], class_names: list[str]) -> None:
    """Warn when a checkpoint evaluated on a datamodule was trained with other class names."""
    trained = checkpoint.get("class_names")
    if trained is not None and list(trained) != list(class_names):
        logger.warning(
            "The checkpoint was trained with classes %s, the data has %s: scoring with the data's, label by "
            "label",
            trained,
            class_names,
        )


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def strict_json(content: Any, **kwargs: Any) -> str:
    """``content`` as standard JSON: a NaN or infinite number (e.g. the AP of a class without any ground
    truth) becomes ``null``, where ``json.dumps`` would write a bare ``NaN`` that JSON readers reject."""
    return json.dumps(_finite(content), allow_nan=False, **kwargs)


def check_checkpoint_task(class_path: str, ours: type, checkpoint: str) -> None:
    """Refuse a checkpoint of task ``class_path`` (its ``_class_path``) for a run whose model is ``ours``,
    unless one is the other or a subclass of it.

    The saved class is looked up among the modules already imported, never imported: a checkpoint's class path
    is not run (:mod:`vitdense.checkpoint_trust`). One not imported is compared by name.

    Raises:
        ValueError: naming ``checkpoint`` (a path, or "the checkpoint"), both tasks and the fix.
    """
    module_name, _, class_name = class_path.rpartition(".")
    saved = getattr(sys.modules.get(module_name), class_name, None)
    same = isinstance(saved, type) and (issubclass(ours, saved) or issubclass(saved, ours))
    if not same and class_name != ours.__name__:
        raise ValueError(
            f"{checkpoint} is a {class_name} checkpoint, but this run's model is a {ours.__name__}: pass a "
            f"checkpoint of a {ours.__name__} run, or the checkpoint's own run config (--config <its "
            "run>/config.yaml)"
        )


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

    def __init__(
        self,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        layer_decay: float = 1.0,
        max_nonfinite_in_a_row: int = 10,
        torch_compile: bool = False,
    ) -> None:
        super().__init__()
        if max_nonfinite_in_a_row < 1:
            raise ValueError(f"max_nonfinite_in_a_row={max_nonfinite_in_a_row}: need at least 1")
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.layer_decay = layer_decay
        self.max_nonfinite_in_a_row = max_nonfinite_in_a_row
        self.torch_compile = torch_compile
        self.skipped_steps = 0
        self._nonfinite_in_a_row = 0
        # The latest evaluation's metrics; the CLI prints them as the run's last line.
        self.final_metrics: dict[str, Any] = {}
        self._checkpoint_step: int | None = None
        self._rng_states_to_restore: dict[str, Any] | None = None

    def configure_model(self) -> None:
        if self.torch_compile and not self.compiled:
            # In place: parameter names, checkpoints and optimizer groups stay those of the eager module.
            self.compiled_part().compile(dynamic=False)

    def compiled_part(self) -> torch.nn.Module:
        """What ``torch_compile`` compiles: by default the backbone (ViT + feature pyramid)."""
        return self.model.backbone

    @property
    def compiled(self) -> bool:
        """Whether :meth:`compiled_part` runs through ``torch.compile`` (see ``torch_compile``)."""
        return getattr(self.compiled_part(), "_compiled_call_impl", None) is not None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["skipped_steps"] = self.skipped_steps
        # The model draws random numbers in training (proposal sampling, drop path): a resumed run continues
        # the same streams, each process its own (they part after the first step: each draws as many numbers
        # as its images have proposals). Every process saves a checkpoint (Lightning writes rank 0's).
        states = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": _numpy_state_to_tensors(np.random.get_state()),
            "python": random.getstate(),
        }
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            per_rank: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(per_rank, states)
            checkpoint["rng_states_per_rank"] = per_rank
        checkpoint["rng_states"] = states

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._check_checkpoint_task(checkpoint)
        self._check_checkpoint_shapes(checkpoint)
        self._checkpoint_step = checkpoint.get("global_step")
        self.skipped_steps = checkpoint.get("skipped_steps", 0)
        per_rank = checkpoint.get("rng_states_per_rank")
        if per_rank is not None and self._trainer is not None and len(per_rank) == self.trainer.world_size:
            self._rng_states_to_restore = per_rank[self.global_rank]
        else:  # saved by one process, or resumed on another number of them: rank 0's streams
            self._rng_states_to_restore = checkpoint.get("rng_states")

    def _checkpoint_name(self) -> str:
        path = getattr(self.trainer, "ckpt_path", None) if self._trainer is not None else None
        return f"checkpoint {path}" if path else "the checkpoint"

    def _check_checkpoint_task(self, checkpoint: dict[str, Any]) -> None:
        """Fail at once on a checkpoint of another task (a detector's for a segmentation run, or the
        reverse), which would otherwise load part of its weights or fail later on the data's shapes."""
        class_path = (checkpoint.get("hyper_parameters") or {}).get("_class_path")
        if isinstance(class_path, str):
            check_checkpoint_task(class_path, type(self), self._checkpoint_name())

    def _check_checkpoint_shapes(self, checkpoint: dict[str, Any]) -> None:
        """Fail with what differs, rather than with PyTorch's list of size mismatches, when the checkpoint's
        weights do not fit this model (another class count, another backbone size)."""
        ours = self.state_dict()
        differ = [
            (name, tuple(tensor.shape), tuple(ours[name].shape))
            for name, tensor in checkpoint.get("state_dict", {}).items()
            if name in ours and tuple(tensor.shape) != tuple(ours[name].shape)
        ]
        if not differ:
            return
        where = self._checkpoint_name()
        trained, now = (
            (checkpoint.get("hyper_parameters") or {}).get("num_classes"),
            self.hparams.get("num_classes"),
        )
        if trained is not None and now is not None and trained != now:
            theirs, here = list(checkpoint.get("class_names") or []), list(getattr(self, "class_names", []))
            hint = (
                " (a COCO file's unused '_background_' category returns with keep_background_category=true)"
                if "_background_" in theirs and "_background_" not in here
                else ""
            )
            raise ValueError(
                f"{where} was trained for {trained} classes, but this data has {now} (only in the "
                f"checkpoint: {[n for n in theirs if n not in here]}; only in the data: "
                f"{[n for n in here if n not in theirs]}): evaluate or fine-tune it on data with the same "
                f"classes{hint}, or start from the backbone weights instead"
            )
        listed = "; ".join(f"{name}: {a} in the checkpoint, {b} here" for name, a, b in differ[:3])
        raise ValueError(
            f"{where} does not fit this model ({len(differ)} weights differ in shape: {listed}); build the "
            "model as it was trained: pass the run's own config.yaml with --config"
        )

    def on_train_end(self) -> None:
        # Evaluations after fit (the CLI's of the final weights) score the weights fit left, not those of the
        # checkpoint it resumed from.
        self._checkpoint_step = self.global_step

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Restored here, not on load: setting up the DataLoaders in between draws from torch's generator,
        # which an uninterrupted run does not do mid-epoch.
        states, self._rng_states_to_restore = self._rng_states_to_restore, None
        if states is not None:
            torch.set_rng_state(states["torch"])
            if (
                states["cuda"]
                and torch.cuda.is_available()
                and len(states["cuda"]) == torch.cuda.device_count()
            ):
                torch.cuda.set_rng_state_all(states["cuda"])
            np.random.set_state(_numpy_state_from_tensors(states["numpy"]))
            random.setstate(states["python"])

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
            self._nonfinite_in_a_row = 0
            return loss
        self.skipped_steps += 1
        self._nonfinite_in_a_row += 1
        terms = {name: float(value) for name, value in losses.items() if not torch.isfinite(value.detach())}
        images = [target.get("file_name", target.get("image_id")) for target in targets]
        message = (
            f"step {self.global_step}: non-finite loss {terms or float(loss)} on images {images}; skipped "
            f"({self._nonfinite_in_a_row} in a row, {self.skipped_steps} in this run)"
        )
        logger.warning(message)
        self.log("train/skipped_steps", float(self.skipped_steps), rank_zero_only=True)
        if self._nonfinite_in_a_row >= self.max_nonfinite_in_a_row:
            raise FloatingPointError(
                f"{message}. Stopping after {self.max_nonfinite_in_a_row} in a row: lower the learning rate, "
                "clip gradients (trainer.gradient_clip_val), use bf16 rather than fp16, or check these "
                "images' annotations (vitdense check-data)"
            )
        return None

    @property
    def trained_steps(self) -> int:
        """Optimizer steps behind the current weights: the trainer's while fitting, else the checkpoint's."""
        fitting = self._trainer is not None and self.trainer.state.fn == "fit"
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
        """Write ``content`` (JSON, NaN as null; or a str as is) to the log directory, on rank 0 only, whole
        or not at all (:func:`~vitdense.atomic_write.write_atomically`)."""
        # Trainer.log_dir broadcasts from rank 0: every process must ask for it, before any returns.
        folder = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        if not self.trainer.is_global_zero:
            return None
        text = content if isinstance(content, str) else strict_json(content, indent=1)
        return write_atomically(folder / name, text)

    def evaluation_metrics(self) -> list[str]:
        """The names evaluation logs after ``val/`` and ``test/`` (none: monitors are not checked)."""
        return []

    def on_fit_start(self) -> None:
        self._check_monitors()

    def _check_monitors(self) -> None:
        """Refuse a ``ModelCheckpoint`` or ``EarlyStopping`` that monitors a ``val/`` metric this model never
        logs: Lightning would only stop at the end of the first validation, after that much training."""
        logged = [f"val/{name}" for name in self.evaluation_metrics()]
        if not logged:
            return
        for callback in self.trainer.callbacks:
            monitor = getattr(callback, "monitor", None)
            if (
                isinstance(callback, (ModelCheckpoint, EarlyStopping))
                and monitor
                and monitor.startswith("val/")
            ):
                if monitor not in logged:
                    model = type(getattr(self, "model", self)).__name__
                    raise ValueError(
                        f"{type(callback).__name__} monitors {monitor!r}, which {model} never logs; its "
                        f"validation logs {', '.join(logged)}: set the callback's monitor (trainer.callbacks "
                        "in the recipe) to one of them"
                    )

    def _check_schedule_length(self, scheduler: object) -> None:
        """Refuse a run longer than its decaying lr schedule: the steps past its end would train at its
        floor (lr 0 by default), e.g. a finished run resumed with a larger ``max_steps`` alone. Warn of a
        run shorter than its schedule (the lr stops before its floor) or than an lr milestone (no drop)."""
        if self._trainer is None:
            return
        steps = self.trainer.estimated_stepping_batches
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
                f"the trainer runs {steps} optimizer steps (max_steps={self.trainer.max_steps}, max_epochs="
                f"{self.trainer.max_epochs}) but the lr schedule {type(scheduler).__name__} ends at "
                f"total_steps={total}: the steps past it would train at its floor (min_factor x lr). {fix}"
            )

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(layer_decay_param_groups(self, self.layer_decay))
        apply_lr_scale(optimizer)
        if self.lr_scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self.lr_scheduler_factory(optimizer)
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            raise ValueError(
                "the lr_scheduler ReduceLROnPlateau needs a metric, but vitdense steps its lr_scheduler "
                "every optimizer step, without one: use a per-step schedule such as "
                "vitdense.tasks.WarmupCosineLR, WarmupMultiStepLR or WarmupPolyLR "
                "(model.init_args.lr_scheduler in the recipe)"
            )
        self._check_schedule_length(scheduler)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
