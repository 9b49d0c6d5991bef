"""Callbacks the CLI adds to every run (throughput, validation images with predictions, a validation of the
final weights, a progress bar that counts steps) and the checkpoint of the latest training state."""

import glob
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from vitdense.atomic_write import OutputWriteError
from vitdense.compat.lightning import (
    CheckpointSaving,
    RichProgressBarWithTrainDescription,
    can_stop_early,
    is_last_batch,
)
from vitdense.tasks.run_lock import FolderInUseError, RunLock
from vitdense.tasks.training_end import training_ends
from vitdense.tasks.visualization import fit_within

logger = logging.getLogger(__name__)

__all__ = [
    "LatestCheckpoint",
    "MissingCheckpointError",
    "StepProgressBar",
    "ThroughputLogger",
    "ValidateFinalStep",
    "ValidationImageLogger",
    "resumable_checkpoints",
]


class ThroughputLogger(Callback):
    """Logs ``train/images_per_sec`` (all processes together) every ``log_every_n_steps`` training steps.

    The rate is wall time over a window of steps, data loading included, with no device synchronisation
    of its own: at the window's end the logged losses already wait for the device.
    """

    def __init__(self) -> None:
        self._start: float | None = None
        self._images = 0

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start, self._images = None, 0  # epoch boundaries (validation) are not training time

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        if self._start is None:  # the first step of a window only starts the clock
            self._start, self._images = now, 0
            return
        self._images += len(batch[0]) * trainer.world_size
        if trainer.global_step % trainer.log_every_n_steps == 0 and self._images:
            pl_module.log("train/images_per_sec", self._images / (now - self._start), rank_zero_only=True)
            self._start, self._images = now, 0


class StepProgressBar(RichProgressBarWithTrainDescription):
    """Lightning's rich progress bar, with the run's step among its metrics (``step 1200/20000``).

    The recipes stop on ``max_steps`` with ``max_epochs: -1``, where Lightning's bar would read "Epoch 3/-2"
    and give no sense of the whole run: the epoch is shown alone and the step against ``max_steps``.
    """

    def train_description(self, current_epoch: int) -> str:
        if self.trainer.max_epochs not in (None, -1):
            return super().train_description(current_epoch)
        description = f"Epoch {current_epoch}"
        return f"{description:{len(self.validation_description)}}"  # as wide as "Validation": no flicker

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        if trainer.training and trainer.max_steps > 0:
            metrics = {"step": f"{trainer.global_step}/{trainer.max_steps}", **metrics}
        return metrics


class ValidationImageLogger(Callback):
    """Logs the first ``num_images`` validation images with their predictions drawn, each validation.

    Images go to every TensorBoard logger of the run (tag ``val/predictions/<i>``), at their original
    aspect ratio, downscaled to ``max_side``. The task draws them (``draw_predictions``).

    Args:
        num_images: images per validation.
        score_threshold: detections below it are not drawn.
        max_side: longest side of a logged image, in pixels.
    """

    def __init__(self, num_images: int = 4, score_threshold: float = 0.5, max_side: int = 640) -> None:
        self.num_images = num_images
        self.score_threshold = score_threshold
        self.max_side = max_side
        self._images: list[torch.Tensor] = []

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._images = []

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        wanted = self.num_images - len(self._images)
        if wanted <= 0 or trainer.sanity_checking or not trainer.is_global_zero or outputs is None:
            return
        if not any(isinstance(logger, TensorBoardLogger) for logger in trainer.loggers):
            return
        images, targets = batch
        drawn = pl_module.draw_predictions(
            (images[:wanted], targets[:wanted]), outputs[:wanted], score_threshold=self.score_threshold
        )
        self._images.extend(fit_within(image, self.max_side) for image in drawn)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                for index, image in enumerate(self._images):
                    logger.experiment.add_image(f"val/predictions/{index}", image, trainer.global_step)
        self._images = []


class ValidateFinalStep(Callback):
    """Validates the final weights inside ``fit``, whatever the validation schedule, so that every run's
    last weights are scored and a ``ModelCheckpoint`` that monitors a metric considers them.

    Lightning validates a step-based schedule only every ``val_check_interval`` steps (the COCO recipes': 10
    evaluations of 20000 steps in 184375), and an epoch-based one only in the epochs that
    ``check_val_every_n_epoch`` names: a run whose ``max_steps`` or ``max_epochs`` ends elsewhere would leave
    its last weights unscored, or a short run every weight; so would an epoch-based run whose
    ``val_check_interval`` does not divide the epoch. At the step that reaches ``max_steps``, or the last
    batch of ``max_epochs``, this requests the stop that ends training anyway (``trainer.should_stop``),
    which Lightning follows with a validation, and lets this epoch validate.
    """

    def __init__(self) -> None:
        self._every_n_epochs: int | None = None

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if training_ends(trainer, at_epoch_end=is_last_batch(trainer)):
            trainer.should_stop = True
        every = trainer.check_val_every_n_epoch
        if _stopping(trainer) and every is not None and every > 1:
            self._every_n_epochs = every
            trainer.check_val_every_n_epoch = 1

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._restore(trainer)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._restore(trainer)

    def _restore(self, trainer: Trainer) -> None:
        if self._every_n_epochs is not None:
            trainer.check_val_every_n_epoch, self._every_n_epochs = self._every_n_epochs, None


def _stopping(trainer: Trainer) -> bool:
    """Whether a requested stop (e.g. EarlyStopping) ends training now: before ``min_steps`` / ``min_epochs``
    Lightning trains on with ``should_stop`` set."""
    return trainer.should_stop and can_stop_early(trainer)


class LatestCheckpoint(CheckpointSaving):
    """The latest training state, every ``every_n_train_steps`` steps and at the last step of training.

    Kept as one ``step{N}.ckpt`` with ``last.ckpt`` linking to it, in ``<default_root_dir>/checkpoints`` by
    default: a folder that does not change with the logger's version, so that a new run started with
    ``--ckpt_path last`` in the same root finds it, and ``last.ckpt`` is always the newest run's (no
    ``last-v1.ckpt`` beside an older one). (A ``ModelCheckpoint`` that monitors a metric only refreshes its
    ``last.ckpt`` when the metric improves; use this one beside it for resuming.)

    A run holds the folder for as long as it trains (:class:`~vitdense.tasks.run_lock.RunLock`): a second run
    started there meanwhile stops at once, on every process, before it writes anything. ``ckpt_path="last"``
    resumes from ``last.ckpt``, starts afresh only from a folder without any checkpoint, and stops on a
    ``last.ckpt`` that leads nowhere or on step checkpoints without one (:func:`resumable_checkpoints`).

    The last step is saved when it is taken (``max_steps`` reached, the last epoch's last batch, or a
    requested stop), not when training has ended, by which time Lightning has counted one more epoch: a run
    resumed from it to train longer would skip an epoch.

    Args:
        every_n_train_steps: steps between saves.
        dirpath: folder; default ``<default_root_dir>/checkpoints``.
    """

    def __init__(self, every_n_train_steps: int = 1000, dirpath: str | None = None) -> None:
        super().__init__(
            dirpath=dirpath,
            filename="step{step}",
            auto_insert_metric_name=False,
            every_n_train_steps=every_n_train_steps,
            save_top_k=1,
            save_last="link",
            enable_version_counter=False,
        )
        self._lock: RunLock | None = None

    def _resolve_dirpath(self, trainer: Trainer) -> None:
        if self.dirpath is None:
            self.dirpath = os.path.join(trainer.default_root_dir, "checkpoints")

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._resolve_dirpath(trainer)
        super().setup(trainer, pl_module, stage)
        if stage == "fit":
            self._lock_folder(trainer)

    def _lock_folder(self, trainer: Trainer) -> None:
        """Rank 0 locks the folder for this run; when it cannot, every process stops with its error (none
        waits for a process that has stopped)."""
        refusal: Exception | None = None
        if trainer.is_global_zero:
            self._lock = RunLock(str(self.dirpath))
            try:
                self._lock.acquire()
            except (FolderInUseError, OutputWriteError) as error:
                refusal = error
        refusal = trainer.strategy.broadcast(refusal, src=0)
        if refusal is not None:
            raise refusal

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        self._release()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)  # may save the state at the failure first
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Here the checkpoint to resume from, if any, is known under every strategy.
        super().on_train_start(trainer, pl_module)
        if trainer.ckpt_path is None and trainer.is_global_zero:
            self._warn_of_an_earlier_run()

    def _warn_of_an_earlier_run(self) -> None:
        earlier = sorted(glob.glob(os.path.join(glob.escape(str(self.dirpath)), "step*.ckpt")))
        if not earlier:
            return
        last = os.path.join(str(self.dirpath), "last.ckpt")
        target = f"; last.ckpt -> {os.path.basename(os.readlink(last))}" if os.path.islink(last) else ""
        names = ", ".join(os.path.basename(path) for path in earlier)
        logger.warning(
            "%s holds an earlier run's checkpoints (%s%s): this new run, started without --ckpt_path, points "
            "last.ckpt at its own and overwrites those of the steps it reaches. To continue the earlier run "
            "instead, stop and pass --ckpt_path last; to keep both, give this run another "
            "trainer.default_root_dir.",
            self.dirpath,
            names,
            target,
        )

    def find_last_checkpoints(self, trainer: Trainer) -> set[str]:
        self._resolve_dirpath(trainer)  # `--ckpt_path last` looks before setup
        resumable_checkpoints(Path(self.dirpath))  # stops on a state that cannot be resumed
        return super().find_last_checkpoints(trainer)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if training_ends(trainer, at_epoch_end=False) or _stopping(trainer):
            self.save_now(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        # A run that reached max_steps was saved at that batch's end: save_now skips a step saved already.
        if training_ends(trainer, at_epoch_end=True) or _stopping(trainer):
            self.save_now(trainer)


class MissingCheckpointError(FileNotFoundError):
    """``ckpt_path="last"`` finds checkpoints, but no ``last.ckpt`` that leads to one of them."""


def _step_number(path: Path) -> float:
    digits = re.search(r"\d+", path.name)
    return int(digits.group()) if digits else float("inf")


def _why_not_a_file(path: Path) -> str:
    if path.is_symlink() and not path.exists():
        return f"{path} links to {os.readlink(path)}, which leads to no file (missing, or a link loop)"
    if path.is_dir():
        return f"{path} is a folder, not a checkpoint"
    return f"{path} is not a regular file"


def resumable_checkpoints(folder: Path) -> list[Path]:
    """The ``last*.ckpt`` files in ``folder`` that ``ckpt_path="last"`` can resume from.

    None in a folder without any checkpoint state (no ``last*.ckpt``, no ``step*.ckpt``): the first run of a
    script that always resumes starts from the initial weights.

    Raises:
        MissingCheckpointError: a ``last*.ckpt`` leads to no file (a dangling link, a link loop, a folder), or
            the folder holds ``step*.ckpt`` files without a ``last*.ckpt``. Training from the initial weights
            would then overwrite them; the message names the step checkpoints found and how to go on.
    """
    lasts = sorted(folder.glob("last*.ckpt"))
    steps = sorted(folder.glob("step*.ckpt"), key=_step_number)
    broken = [path for path in lasts if not path.is_file()]
    if not broken and (lasts or not steps):
        return lasts
    if steps:
        found = f"{folder} holds {', '.join(path.name for path in steps)}"
        fix = (
            f"--ckpt_path {steps[-1]} to resume from the latest step, or another trainer.default_root_dir to "
            "start afresh (this run would overwrite them)"
        )
    else:
        found = f"{folder} holds no step*.ckpt either"
        fix = "--ckpt_path <a checkpoint> to resume from one, or remove the link to start afresh"
    why = _why_not_a_file(broken[0]) if broken else "no last.ckpt links to the latest step"
    raise MissingCheckpointError(f"--ckpt_path last: {why}; {found}. Pass {fix}")
